// The two model readers agree on every file: the full build's Model::load and the portable
// runtime's reader (kernels/portable/model_file.cpp) accept and refuse the same files, on a
// corpus built here from real model files: the files as saved, mutated graph specs (unknown,
// repeated or missing attributes, junk after numbers, wrong counts, bad names, headers and
// output lines), mutated tensors and masks, truncations, trailing bytes, and bytes flipped with
// and without a recomputed CRC (so the parsers behind the checksum are reached). Where both
// accept a file, both compute the same outputs.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"

using namespace dnns;
using dnns::testing::every_kind_model;
using dnns::testing::logit_scale;
using dnns::testing::random_images;
using dnns::testing::random_masks;
using dnns::testing::randomize_batchnorm;
using dnns::testing::TempDir;

namespace {

enum class Expect { Accept, Refuse, Either };

struct Sample {
  std::string name;
  std::string bytes;
  Expect expect;
};
using Judge = std::function<void(const Sample&)>;  // each sample is judged as it is made

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_file(const std::string& path, const std::string& bytes) {
  std::filesystem::remove(path);
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

// The bytes of an archive as save_archive writes them.
std::string archive_bytes(const Archive& a, const std::string& scratch) {
  save_archive(scratch, a);
  return read_file(scratch);
}

// Rewrites the 12-byte trailer's CRC-32 to match the bytes before it.
std::string with_fixed_crc(std::string b) {
  if (b.size() < 12) return b;
  const uint32_t crc = crc32_update(0, b.data(), b.size() - 12);
  for (int k = 0; k < 4; ++k) b[b.size() - 12 + size_t(k)] = static_cast<char>((crc >> (8 * k)) & 0xFF);
  return b;
}

std::vector<std::string> lines_of(const std::string& spec) {
  std::vector<std::string> out;
  std::istringstream is(spec);
  std::string line;
  while (std::getline(is, line)) out.push_back(line);
  return out;
}
std::string join_lines(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines) s += l + "\n";
  return s;
}
std::vector<std::string> tokens_of(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream is(line);
  std::string t;
  while (is >> t) out.push_back(t);
  return out;
}
std::string join_tokens(const std::vector<std::string>& t) {
  std::string s;
  for (size_t i = 0; i < t.size(); ++i) s += (i ? " " : "") + t[i];
  return s;
}

// The node lines worth mutating: all of a small graph; of a large one, the first line of each
// kind (a conv with per-position biases counting as its own kind).
std::vector<bool> lines_to_mutate(const std::vector<std::string>& lines, bool all) {
  std::vector<bool> pick(lines.size(), all);
  std::set<std::string> kinds;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string kind = lines[i].substr(0, lines[i].find(' ')) + (lines[i].find("pos_h=") != std::string::npos ? "+pos" : "");
    if (kinds.insert(kind).second) pick[i] = true;
  }
  return pick;
}

// Graph spec mutations of `base` (line by line, token by token), each saved as a valid archive.
void spec_mutations(const std::string& tag, const Archive& base, bool all_lines, const std::string& scratch,
                    const Judge& out) {
  const std::vector<std::string> lines = lines_of(base.meta.at("graph"));
  const std::vector<bool> pick = lines_to_mutate(lines, all_lines);
  auto add = [&](const std::string& what, const std::vector<std::string>& l, Expect e) {
    Archive a = base;
    a.meta["graph"] = join_lines(l);
    out({tag + ": " + what, archive_bytes(a, scratch), e});
  };
  auto add_text = [&](const std::string& what, const std::string& text, Expect e) {
    Archive a = base;
    a.meta["graph"] = text;
    out({tag + ": " + what, archive_bytes(a, scratch), e});
  };
  const std::string spec = base.meta.at("graph");
  add_text("empty spec", "", Expect::Refuse);
  add_text("blank lines between nodes", std::string(spec).replace(spec.find('\n'), 1, "\n\n\n"), Expect::Accept);
  add_text("a line of spaces", std::string(spec).replace(spec.find('\n'), 1, "\n   \n"), Expect::Refuse);
  add_text("a tab-only line", spec + "\t\n", Expect::Refuse);
  {
    std::string crlf;
    for (char c : spec) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
    add_text("CRLF line ends", crlf, Expect::Accept);
  }
  add_text("no final newline", spec.substr(0, spec.size() - 1), Expect::Accept);
  add_text("junk after the spec", spec + "junk", Expect::Refuse);

  for (size_t i = 0; i < lines.size(); ++i) {
    if (!pick[i]) continue;
    const std::vector<std::string> tok = tokens_of(lines[i]);
    const std::string at = "line " + std::to_string(i + 1) + " (" + (tok.empty() ? "" : tok[0]) + ")";
    auto with_line = [&](const std::string& replacement) {
      std::vector<std::string> l = lines;
      l[i] = replacement;
      return l;
    };
    {
      std::vector<std::string> l = lines;
      l.erase(l.begin() + static_cast<long>(i));
      add(at + " removed", l, i == 0 || tok[0] == "input" || tok[0] == "output" ? Expect::Refuse : Expect::Either);
    }
    add(at + " with trailing junk", with_line(lines[i] + " junk"), Expect::Refuse);
    add(at + " with an unknown attribute", with_line(lines[i] + " foo=1"), Expect::Refuse);
    add(at + " indented", with_line("  " + lines[i] + "  "), Expect::Accept);
    if (i == 0) {
      add("header version 2", with_line("dnnshifter-graph 2"), Expect::Refuse);
      add("header without version", with_line("dnnshifter-graph"), Expect::Refuse);
      continue;
    }
    if (tok[0] == "output") {
      add("output of the input node", with_line("output " + tokens_of(lines[1])[1]), Expect::Refuse);
      add("output of an unknown node", with_line("output nosuch"), Expect::Refuse);
      add("output twice", [&] { auto l = lines; l.push_back(lines[i]); return l; }(), Expect::Accept);
      add("output of an inner node", with_line("output " + tokens_of(lines[i - 2])[1]), Expect::Either);
      continue;
    }
    add(at + " of an unknown kind", with_line(tok[0] + "2 " + join_tokens({tok.begin() + 1, tok.end()})), Expect::Refuse);
    for (const std::string bad : {"a:b", "a,b", "x=y"}) {
      std::vector<std::string> t = tok;
      t[1] = bad;
      add(at + " named '" + bad + "'", with_line(join_tokens(t)), Expect::Refuse);
    }
    if (i >= 2) {
      std::vector<std::string> t = tok;
      t[1] = tokens_of(lines[i - 1])[1];
      add(at + " named as the node before", with_line(join_tokens(t)), Expect::Refuse);
    }
    if (i + 1 < lines.size() && tok[0] != "input") {  // moved before the line above it
      std::vector<std::string> l = lines;
      std::swap(l[i], l[i - 1]);
      add(at + " swapped with the line above", l, Expect::Either);
    }
    for (size_t k = 2; k < tok.size(); ++k) {
      const size_t eq = tok[k].find('=');
      if (eq == std::string::npos) continue;
      const std::string key = tok[k].substr(0, eq), value = tok[k].substr(eq + 1);
      auto with_value = [&](const std::string& v) {
        std::vector<std::string> t = tok;
        t[k] = key + "=" + v;
        return with_line(join_tokens(t));
      };
      const std::string kat = at + " " + key;
      {
        std::vector<std::string> t = tok;
        t.push_back(tok[k]);
        add(kat + " given twice", with_line(join_tokens(t)), Expect::Refuse);
        t = tok;
        t.erase(t.begin() + static_cast<long>(k));
        add(kat + " missing", with_line(join_tokens(t)), Expect::Either);
      }
      add(kat + " with junk after its value", with_value(value + "x"), Expect::Refuse);
      add(kat + " empty", with_value(""), Expect::Refuse);
      add(kat + " with a space inside", with_value(value + " 1"), Expect::Refuse);
      if (key == "inputs") {
        add(kat + " with a trailing comma", with_value(value + ","), Expect::Refuse);
        add(kat + " with a leading comma", with_value("," + value), Expect::Refuse);
        add(kat + " naming an unknown node", with_value("nosuch"), Expect::Refuse);
        add(kat + " naming itself", with_value(tok[1]), Expect::Refuse);
        add(kat + " doubled", with_value(value + "," + value), Expect::Refuse);
        add(kat + " from the input", with_value(tokens_of(lines[1])[1]), Expect::Either);
      } else if (key == "shape") {
        for (const std::string& v : std::vector<std::string>{value + ",", "," + value, "3,12", value + ",1", "0,12,12", "3,12,12,",
                                    "3,12,4294967308", "3,12,2147483648", "3,0x0c,12", "3,12, 12", "-3,12,12"})
          add(kat + " = '" + v + "'", with_value(v), Expect::Refuse);
      } else if (key == "eps" || key == "momentum") {
        for (const std::string v : {"1e-3", "0x1p-10", "1E-5", "0.5"}) add(kat + " = " + v, with_value(v), Expect::Accept);
        for (const std::string v : {"abc", "1e-5e", "1e99", "1e-99", "0x", "1,0", "1e"})
          add(kat + " = '" + v + "'", with_value(v), Expect::Refuse);
        add(kat + " = nan", with_value("nan"), Expect::Either);
        add(kat + " = -1", with_value("-1"), Expect::Either);
      } else {  // integers: the counts of channels, kernels, strides, flags
        const long long v = std::stoll(value);
        for (long long d : {-1LL, 1LL, 2LL}) add(kat + " " + std::to_string(v + d), with_value(std::to_string(v + d)), Expect::Either);
        for (const std::string& w : std::vector<std::string>{"0", "-1", "+" + value, "0" + value, "2147483648", "99999999999", "1.0", "0x1", "1e1", "one"})
          add(kat + " = '" + w + "'", with_value(w), Expect::Either);
      }
    }
  }
}

// Tensor and mask mutations of `base` (of every tensor, or of the nodes lines_to_mutate picks).
void tensor_mutations(const std::string& tag, const Archive& base, bool all_tensors, const std::string& scratch,
                      const Judge& out) {
  auto add = [&](const std::string& what, const Archive& a, Expect e) {
    out({tag + ": " + what, archive_bytes(a, scratch), e});
  };
  std::set<std::string> nodes;
  const std::vector<std::string> lines = lines_of(base.meta.at("graph"));
  const std::vector<bool> pick = lines_to_mutate(lines, all_tensors);
  for (size_t i = 1; i < lines.size(); ++i)
    if (pick[i]) nodes.insert(tokens_of(lines[i]).at(1));
  for (const auto& [name, t] : base.tensors) {
    const std::string param = name.rfind("mask:", 0) == 0 ? name.substr(5) : name;
    if (!nodes.count(param.substr(0, param.find('.')))) continue;
    Archive a = base;
    a.tensors.erase(name);
    add("without tensor '" + name + "'", a, name.rfind("mask:", 0) == 0 ? Expect::Accept : Expect::Refuse);
    if (t.numel() > 1) {
      a = base;
      a.tensors[name] = t.reshape({t.numel()});
      add("tensor '" + name + "' flattened", a, t.shape().size() == 1 ? Expect::Accept : Expect::Refuse);
      a = base;
      a.tensors[name] = Tensor::from({t.numel() - 1}, std::vector<float>(size_t(t.numel() - 1), 0.0f));
      add("tensor '" + name + "' one value short", a, Expect::Refuse);
    }
    if (name.rfind("mask:", 0) == 0) {
      for (float v : {2.0f, 0.5f, -1.0f, NAN, -0.0f}) {
        a = base;
        Tensor m = t.clone();
        m[0] = v;
        a.tensors[name] = m;
        add("mask '" + name + "' holding " + std::to_string(v), a, std::signbit(v) && v == 0.0f ? Expect::Accept : Expect::Refuse);
      }
    } else {
      a = base;
      a.tensors["mask:" + name] = Tensor::full(t.shape(), 1.0f);
      const bool buffer = name.find("running_") != std::string::npos;
      add("an all-ones mask of '" + name + "'", a, buffer ? Expect::Refuse : Expect::Accept);
      a = base;
      a.tensors["mask:" + name] = Tensor::full({t.numel() + 1}, 1.0f);
      add("a mask of '" + name + "' of another shape", a, Expect::Refuse);
    }
  }
  Archive a = base;
  a.tensors["extra.weight"] = Tensor::full({2}, 1.0f);
  add("an extra tensor", a, Expect::Refuse);
  a = base;
  a.tensors["mask:nosuch.weight"] = Tensor::full({2}, 1.0f);
  add("a mask of no parameter", a, Expect::Refuse);
  a = base;
  a.tensors["mask:"] = Tensor::full({2}, 1.0f);
  add("a mask named 'mask:'", a, Expect::Refuse);
  a = base;
  a.kind = "checkpoint";
  add("kind checkpoint", a, Expect::Refuse);
  a = base;
  a.meta.erase("graph");
  add("no graph", a, Expect::Refuse);
  a = base;
  a.meta.erase("arch");
  add("no arch", a, Expect::Accept);
  a = base;
  a.meta["note"] = "anything";
  add("an extra meta entry", a, Expect::Accept);
}

// Byte-level damage of a saved file: truncations, trailing bytes, flips with the CRC left
// stale (checksum refusals) and recomputed (the structure behind the checksum).
// `spec_step`: every how many bytes of the header, meta and spec are flipped (1 for all);
// `data_samples`: how many bytes of the tensor records after them.
void byte_mutations(const std::string& tag, const std::string& file, size_t spec_step, const Judge& out,
                    size_t data_samples = 300) {
  const size_t n = file.size();
  for (size_t cut : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(15), size_t(16), size_t(20), n / 3, n / 2,
                     n - 13, n - 12, n - 8, n - 1})
    out({tag + ": truncated to " + std::to_string(cut) + " bytes", file.substr(0, cut), Expect::Refuse});
  out({tag + ": a trailing byte", file + "x", Expect::Refuse});
  out({tag + ": a second end marker", file + "ENDSHIFT", Expect::Refuse});
  out({tag + ": a trailing archive", file + file, Expect::Refuse});
  const size_t stale_step = std::max<size_t>(97, n / 60);
  for (size_t pos = 0; pos < n; pos += stale_step) {
    std::string b = file;
    b[pos] = static_cast<char>(b[pos] ^ 0x10);
    out({tag + ": byte " + std::to_string(pos) + " flipped, stale CRC", b, Expect::Refuse});
  }
  // The header, the meta entries and the graph spec byte by byte (the first tensor's entry
  // starts after them), a sample of the rest.
  const size_t spec_end = std::min(n - 12, file.find("output ") + 64);
  const size_t data_step = std::max<size_t>(13, (n - spec_end) / data_samples);
  for (size_t pos = 8; pos < n - 12; pos += pos < spec_end ? spec_step : data_step)
    for (unsigned char x : {0x01, 0x20}) {
      std::string b = file;
      b[pos] = static_cast<char>(b[pos] ^ x);
      out({tag + ": byte " + std::to_string(pos) + " ^ " + std::to_string(x) + ", CRC recomputed",
                     with_fixed_crc(b), Expect::Either});
    }
  for (size_t pos = 16; pos < spec_end; pos += 3 * spec_step)
    for (char c : {' ', '\n', '=', ',', ':', '0', '\0'}) {
      std::string b = file;
      if (b[pos] == c) continue;
      b[pos] = c;
      out({tag + ": byte " + std::to_string(pos) + " set to " + std::to_string(int(c)) + ", CRC recomputed",
                     with_fixed_crc(b), Expect::Either});
    }
}

struct Outcome {
  bool ok = false;
  std::string error;
  std::vector<float> outputs;  // on the probe images, when loaded
};

// Outputs are compared only where the graph's input is the probe's shape.
Outcome full_reader(const std::string& path, const Tensor& probe) {
  Outcome o;
  try {
    Model m = Model::load(path);
    o.ok = true;
    if (m.input_shape() == Shape{probe.dim(1), probe.dim(2), probe.dim(3)}) o.outputs = m.forward(probe, false).to_vector();
  } catch (const Error& e) {
    o.error = e.what();
  }
  return o;
}

Outcome portable_reader(const std::string& bytes, const Tensor& probe) {
  Outcome o;
  rt::LoadedModel lm;
  const rt::Status s = rt::load_model_memory(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "file", &lm);
  o.ok = s == rt::kOk;
  if (!o.ok) {
    o.error = lm.error;
    return o;
  }
  const int32_t n = static_cast<int32_t>(probe.dim(0));
  if (lm.graph.in_c == probe.dim(1) && lm.graph.in_h == probe.dim(2) && lm.graph.in_w == probe.dim(3)) {
    std::vector<rt::NodePlan> plan(static_cast<size_t>(lm.graph.num_nodes));
    int64_t per_image = 0;
    char err[256];
    REQUIRE(rt::plan_graph(lm.graph, plan.data(), &per_image, err, sizeof err) == rt::kOk);
    std::vector<float> arena(static_cast<size_t>(per_image * n) + 1);
    rt::Engine e;
    REQUIRE(rt::engine_init(&e, &lm.graph, plan.data(), arena.data(), per_image * n, n) == rt::kOk);
    o.outputs.resize(static_cast<size_t>(rt::engine_output_size(&e) * n));
    REQUIRE(rt::engine_run(&e, probe.data(), n, o.outputs.data()) == rt::kOk);
  }
  rt::free_model(&lm);
  return o;
}

// The same values within the tolerance of the logit scale; NaN where the other has NaN.
bool same_outputs(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  float scale = 1.0f;
  for (float v : a)
    if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i])) return false;
      continue;
    }
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return false;
      continue;
    }
    if (std::fabs(a[i] - b[i]) > 1e-4f * scale) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("the full and the portable model readers accept and refuse the same files") {
  TempDir tmp("readers");
  const std::string scratch = tmp / "scratch.dnns", probe_file = tmp / "probe.dnns";

  // Base files: the hand-built graph of every node kind with masks (0/1, a -0, on a bias too),
  // and a compacted masked ResNet-20 (per-position biases, adds, global pooling).
  Model every = every_kind_model();
  every.masks["c1.weight"] = Tensor::full(every.params()[0].param->value.shape(), 1.0f);
  every.masks["c1.weight"][3] = 0.0f;
  every.masks["c1.weight"][4] = -0.0f;
  every.masks["fc.bias"] = Tensor::full({5}, 1.0f);
  every.masks["fc.bias"][1] = 0.0f;
  every.apply_masks();
  Model r20 = build_model("resnet20", 10, {3, 8, 8});
  {
    Rng rng(3);
    init_model(r20, rng);
    randomize_batchnorm(r20, rng);
    random_masks(r20, rng, 0.7f, 0.5f);  // most filters dead: a small file, per-position biases
    r20 = compact_model(r20);
  }
  // A masked (not compacted) ResNet-20 at 4% density: sparse records with gap8 and bitmap
  // indices, masks stored as their weights' support (archive format 2).
  Model sparse = build_model("resnet20", 10, {3, 8, 8});
  {
    Rng rng(4);
    init_model(sparse, rng);
    randomize_batchnorm(sparse, rng);
    random_masks(sparse, rng, 0.2f, 0.05f);
  }
  struct Base {
    std::string tag;
    Model* model;
    Tensor probe;
  };
  Rng rng(11);
  std::vector<Base> bases = {{"every_kind", &every, random_images(2, {3, 12, 12}, rng)},
                             {"resnet20_compact", &r20, random_images(2, {3, 8, 8}, rng)},
                             {"resnet20_sparse", &sparse, random_images(2, {3, 8, 8}, rng)}};

  int agreed = 0, accepted = 0, refused = 0, compared = 0;
  for (Base& base : bases) {
    base.model->save(scratch);
    const std::string file = read_file(scratch);
    const Archive archive = load_archive(scratch);
    const bool small = base.tag == "every_kind";  // every line and tensor; of the ResNet, one per kind
    const Judge judge = [&](const Sample& s) {
      INFO(s.name);
      write_file(probe_file, s.bytes);
      const Outcome full = full_reader(probe_file, base.probe), portable = portable_reader(s.bytes, base.probe);
      const bool agree = full.ok == portable.ok;
      agreed += agree;
      accepted += agree && full.ok;
      refused += agree && !full.ok;
      CHECK_MESSAGE(agree, s.name << ": the full build " << (full.ok ? "accepts it" : "refuses it: " + full.error)
                                  << "; the portable runtime "
                                  << (portable.ok ? "accepts it" : "refuses it: " + portable.error));
      if (s.expect != Expect::Either)
        CHECK_MESSAGE(full.ok == (s.expect == Expect::Accept),
                      s.name << ": expected " << (s.expect == Expect::Accept ? "accepted" : "refused") << ", got "
                             << (full.ok ? "accepted" : "refused: " + full.error));
      if (agree && full.ok && !full.outputs.empty()) {
        ++compared;
        CHECK_MESSAGE(same_outputs(full.outputs, portable.outputs), s.name << ": both accept it but compute different outputs");
      }
    };
    judge({base.tag + ": as saved", file, Expect::Accept});
    if (base.tag == "resnet20_sparse") {  // its spec is resnet20_compact's kind: only its records are new
      tensor_mutations(base.tag, archive, false, scratch, judge);
      byte_mutations(base.tag, file, 401, judge, 120);  // the spec region lightly: it is resnet20_compact's kind
      continue;
    }
    spec_mutations(base.tag, archive, small, scratch, judge);
    tensor_mutations(base.tag, archive, small, scratch, judge);
    byte_mutations(base.tag, file, small ? 1 : 23, judge);
  }
  MESSAGE(agreed << " files judged alike: " << accepted << " accepted by both (" << compared
                 << " with outputs compared), " << refused << " refused by both");
  CHECK(accepted >= 100);
  CHECK(compared >= 100);  // accepted files were also run, and both readers computed the same
  CHECK(refused >= 1000);
}
