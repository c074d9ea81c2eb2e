#include "prune/mask.h"

#include <cstdio>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json.h"

namespace dnns {

std::vector<std::string> default_prune_ignore(const std::string& arch) {
  // open_lth's VGG default (pruning_layers_to_ignore = 'fc.weight'): the 512 x classes output
  // layer is tiny, and pruning it hurts accuracy for no saving.
  if (arch.rfind("vgg", 0) == 0) return {"fc"};
  return {};
}

std::vector<std::string> parse_prune_ignore(const std::string& value, const std::string& arch) {
  if (value == "auto") return default_prune_ignore(arch);
  std::vector<std::string> out;
  if (value == "none" || value.empty()) return out;
  std::stringstream ss(value);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<Model::NamedParam> prunable_weights(Model& m) {
  std::vector<Model::NamedParam> out;
  for (Model::NamedParam& p : m.params())
    if (p.param->prunable) out.push_back(p);
  return out;
}

bool is_ignored(const std::string& weight_name, const std::vector<std::string>& ignore) {
  for (const std::string& e : ignore) {
    if (e == weight_name) return true;
    // A node name: the weight's name is "<node>.<param>".
    if (weight_name.size() > e.size() && weight_name.compare(0, e.size(), e) == 0 && weight_name[e.size()] == '.' &&
        weight_name.find('.', e.size() + 1) == std::string::npos)
      return true;
  }
  return false;
}

void check_prune_ignore(const Model& m, const std::vector<std::string>& ignore) {
  std::vector<Model::NamedParam> w = prunable_weights(const_cast<Model&>(m));  // names only
  for (const std::string& e : ignore) {
    bool found = false;
    for (const Model::NamedParam& p : w) found = found || is_ignored(p.name, {e});
    if (!found) {
      std::string names;
      for (const Model::NamedParam& p : w) names += (names.empty() ? "" : ", ") + p.name;
      throw Error("prune ignore list: '" + e + "' names no prunable weight of the model (" + m.arch +
                  "; its prunable weights: " + names + ")");
    }
  }
}

MaskSet ones_masks(const Model& m) {
  MaskSet out;
  for (Model::NamedParam& p : prunable_weights(const_cast<Model&>(m)))  // names and shapes only
    out[p.name] = Tensor::full(p.param->value.shape(), 1.0f);
  return out;
}

MaskSet current_masks(Model& m) {
  MaskSet out;
  for (Model::NamedParam& p : prunable_weights(m)) {
    auto it = m.masks.find(p.name);
    out[p.name] = it == m.masks.end() ? Tensor::full(p.param->value.shape(), 1.0f) : it->second.to(Device::CPU);
  }
  return out;
}

int64_t mask_count(const Tensor& mask) {
  Tensor host = mask.is_cpu() ? mask : mask.to(Device::CPU);
  const float* v = host.data();
  int64_t n = 0;
  for (int64_t i = 0; i < host.numel(); ++i) n += v[i] != 0.0f;
  return n;
}

void set_masks(Model& m, const MaskSet& masks) {
  std::vector<Model::NamedParam> w = prunable_weights(m);
  std::set<std::string> names;
  for (const Model::NamedParam& p : w) names.insert(p.name);
  for (const auto& [name, mask] : masks) {
    check(names.count(name), "masks: '" + name + "' is not a prunable weight of the model");
  }
  MaskSet installed;
  for (const Model::NamedParam& p : w) {
    auto it = masks.find(p.name);
    check(it != masks.end(), "masks: the prunable weight '" + p.name + "' has no mask");
    check_shape(it->second.shape(), p.param->value.shape(), "mask of '" + p.name + "'");
    Tensor host = it->second.is_cpu() ? it->second : it->second.to(Device::CPU);
    for (int64_t i = 0; i < host.numel(); ++i)
      if (host[i] != 0.0f && host[i] != 1.0f)
        throw Error("mask of '" + p.name + "' holds " + std::to_string(host[i]) + " at index " + std::to_string(i) +
                    " (masks hold only 0 and 1)");
    installed[p.name] = it->second.to(m.device());  // a copy: the model owns its masks
  }
  m.masks = std::move(installed);
  m.apply_masks();
}

// ---------------------------------------------------------------- sparsity reports

SparsityReport sparsity_report(Model& m, const std::vector<std::string>& ignore) {
  SparsityReport r;
  for (Model::NamedParam& p : prunable_weights(m)) {
    LayerSparsity l;
    l.name = p.name;
    l.shape = p.param->value.shape();
    l.total = p.param->value.numel();
    auto it = m.masks.find(p.name);
    l.remaining = it == m.masks.end() ? l.total : mask_count(it->second);
    l.ignored = is_ignored(p.name, ignore);
    r.total += l.total;
    r.remaining += l.remaining;
    if (!l.ignored) {
      r.prunable_total += l.total;
      r.prunable_remaining += l.remaining;
    }
    r.layers.push_back(std::move(l));
  }
  r.model_parameters = m.num_params();
  return r;
}

static std::string shape_json(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string sparsity_json(const SparsityReport& r) {
  std::string layers = "[";
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const LayerSparsity& l = r.layers[i];
    layers += (i ? ",\n    " : "\n    ") + Json()
                                              .add("name", l.name)
                                              .add_raw("shape", shape_json(l.shape))
                                              .add("total", l.total)
                                              .add("remaining", l.remaining)
                                              .add("density", l.density())
                                              .add("ignored", l.ignored)
                                              .str();
  }
  layers += r.layers.empty() ? "]" : "\n  ]";
  return Json()
             .add("total", r.total)
             .add("remaining", r.remaining)
             .add("density", r.density())
             .add("prunable_total", r.prunable_total)
             .add("prunable_remaining", r.prunable_remaining)
             .add("model_parameters", r.model_parameters)
             .add_raw("layers", layers)
             .str() +
         "\n";
}

std::string sparsity_table(const SparsityReport& r) {
  size_t wname = 7, wshape = 5;
  for (const LayerSparsity& l : r.layers) {
    wname = std::max(wname, l.name.size() + (l.ignored ? 10 : 0));
    wshape = std::max(wshape, shape_str(l.shape).size());
  }
  std::ostringstream os;
  char buf[512];
  auto row = [&](const std::string& name, const std::string& shape, const std::string& total,
                 const std::string& remaining, const std::string& density) {
    std::snprintf(buf, sizeof buf, "%-*s  %-*s  %12s  %12s  %8s\n", int(wname), name.c_str(), int(wshape),
                  shape.c_str(), total.c_str(), remaining.c_str(), density.c_str());
    os << buf;
  };
  auto pct = [](double d) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f%%", 100.0 * d);
    return std::string(b);
  };
  row("layer", "shape", "total", "remaining", "density");
  for (const LayerSparsity& l : r.layers)
    row(l.name + (l.ignored ? " (ignored)" : ""), shape_str(l.shape), std::to_string(l.total),
        std::to_string(l.remaining), pct(l.density()));
  row("overall", "", std::to_string(r.total), std::to_string(r.remaining), pct(r.density()));
  return os.str();
}

}  // namespace dnns
