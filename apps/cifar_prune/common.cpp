#include "apps/cifar_prune/common.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/threading.h"
#include "nn/distributed.h"
#include "nn/execution.h"

namespace dnns::app {

void add_system_flags(Flags& f) {
  f.add("threads", "0", "worker threads (0 = all cores)");
  f.add("device", "cpu", "cpu or cuda");
  f.add("seed", "1", "seed for initialisation and data order");
}

void add_training_flags(Flags& f) {
  f.add("data", "fashion-mnist",
        "data set: a CIFAR-10/100 binary folder, an image folder with train/ and test/, IDX files, "
        "'fashion-mnist' (Debian package) or 'synthetic'");
  f.add("model", "resnet20", "zoo model (see `cifar_prune models`)");
  f.add("epochs", "160", "training epochs");
  f.add("batch-size", "128", "mini-batch size");
  f.add("lr", "0.1", "base learning rate");
  f.add("momentum", "0.9", "SGD momentum");
  f.add("weight-decay", "1e-4", "L2 weight decay");
  f.add_bool("nesterov", "Nesterov momentum");
  f.add("schedule", "multistep", "learning-rate schedule: multistep, cosine or constant");
  f.add("milestones", "80,120", "multistep: epochs at which the LR is multiplied by --gamma");
  f.add("gamma", "0.1", "multistep: LR factor at each milestone");
  f.add("warmup-steps", "0", "linear LR warm-up over this many iterations");
  f.add("label-smoothing", "0", "label smoothing in [0, 1)");
  f.add("augment", "auto", "CIFAR augmentation (pad-4 crop + flip): on, off, or auto (on for 32x32 RGB)");
  f.add("sync-bn", "on", "under mpirun: batchnorm statistics over the global batch (on) or each rank's rows (off)");
  f.add("train-subset", "0", "use only this many training examples (0 = all), drawn with --seed");
  f.add("test-subset", "0", "use only this many test examples (0 = all), drawn with --seed");
}

Device setup_system(const Flags& f) {
  int64_t t = f.integer("threads");
  check(t >= 0 && t <= 1024, "--threads must be between 0 and 1024, got " + std::to_string(t));
  // Under mpirun, "all cores" means this rank's share of the machine's cores.
  if (t == 0 && dist::local_size() > 1) t = std::max(1, hardware_threads() / dist::local_size());
  set_num_threads(static_cast<int>(t));
  return parse_device(f.str("device"));
}

// The training and test splits must name the same classes in the same order: a label is an index
// into that list, so a test/ folder that lacks one class folder would shift every later class's
// labels and the test accuracy would be nonsense.
static void check_same_classes(const Dataset& train, const Dataset& test, const std::string& spec) {
  if (train.num_classes == test.num_classes &&
      (train.class_names.empty() || test.class_names.empty() || train.class_names == test.class_names))
    return;
  auto absent = [](const std::vector<std::string>& from, const std::vector<std::string>& in) {
    std::string list;
    for (const std::string& name : from)
      if (std::find(in.begin(), in.end(), name) == in.end()) list += (list.empty() ? "'" : ", '") + name + "'";
    return list;
  };
  std::string msg = "--data " + spec + ": the training split has " + std::to_string(train.num_classes) +
                    " classes, the test split " + std::to_string(test.num_classes);
  const std::string missing = absent(train.class_names, test.class_names), extra = absent(test.class_names, train.class_names);
  if (!missing.empty()) msg += "; missing from the test split: " + missing;
  if (!extra.empty()) msg += "; not in the training split: " + extra;
  if (missing.empty() && extra.empty()) msg += "; the same names in another order";
  throw Error(msg + " (labels are class indices: both splits need the same classes)");
}

DataPair load_data(const Flags& f, bool shard_over_ranks) {
  // Refuse malformed hyper-parameters before any data is read or any folder is made.
  training_config(f, 1);
  std::string spec = f.str("data");
  Dataset train = load_dataset(spec, true);
  Dataset test = load_dataset(spec, false);
  check_same_classes(train, test, spec);
  uint64_t seed = static_cast<uint64_t>(f.integer("seed"));
  int64_t ntrain = f.integer("train-subset"), ntest = f.integer("test-subset");
  check(ntrain >= 0 && ntest >= 0, "--train-subset and --test-subset must be >= 0");
  if (ntrain > 0 && ntrain < train.size()) train = train.sample(ntrain, seed);
  if (ntest > 0 && ntest < test.size()) test = test.sample(ntest, seed + 1);
  check(train.channels == test.channels && train.height == test.height && train.width == test.width,
        spec + ": train and test images differ in shape");
  std::string aug = f.str("augment");
  check(aug == "on" || aug == "off" || aug == "auto", "--augment must be on, off or auto, got '" + aug + "'");
  bool augment = aug == "on" || (aug == "auto" && train.channels == 3 && train.height == 32 && train.width == 32);

  LoaderOptions lo;
  lo.batch_size = f.integer("batch-size");
  check(lo.batch_size > 0, "--batch-size must be positive");
  lo.seed = seed;
  lo.augment = augment;
  lo.normalize = channel_stats(train);
  // Under mpirun each rank reads its shard of every global batch (--batch-size is the global
  // batch, as in one process).
  if (shard_over_ranks) lo.shard = dist::rank(), lo.shards = dist::size();
  LoaderOptions to = lo;
  to.shuffle = false;
  to.augment = false;
  to.batch_size = std::max<int64_t>(lo.batch_size, 256);

  DataPair d;
  d.info.dataset = spec;
  d.info.class_names = train.class_names;
  for (std::string& name : d.info.class_names)  // a folder name may hold one; the model file's list may not
    std::replace(name.begin(), name.end(), '\n', ' ');
  if (train.channels == 3) d.info.channel_order = "RGB";
  if (train.channels == 1) d.info.channel_order = "L";
  d.info.mean = lo.normalize.mean;
  d.info.std = lo.normalize.std;
  std::ostringstream os;
  os << spec << ": " << train.size() << " train / " << test.size() << " test images, " << train.channels << "x"
     << train.height << "x" << train.width << ", " << train.num_classes << " classes"
     << (augment ? ", augmented" : "");
  d.description = os.str();
  d.train = std::make_unique<Loader>(std::move(train), lo);
  d.test = std::make_unique<Loader>(std::move(test), to);
  return d;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  for (size_t at = 0;;) {
    const size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) return out;
    at = comma + 1;
  }
}

std::vector<int> parse_portfolio_levels(const std::string& s, const std::string& flag) {
  std::vector<int> out;
  if (s == "auto") return out;
  for (const std::string& item : split_list(s)) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      check(used == item.size() && v >= 0, "");
      out.push_back(v);
    } catch (...) {
      throw Error(flag + " expects 'auto' or comma-separated levels >= 0, got '" + s + "'");
    }
    check(std::count(out.begin(), out.end(), out.back()) == 1,
          flag + " names level " + std::to_string(out.back()) + " twice, in '" + s + "'");
  }
  check(!out.empty(), flag + " expects 'auto' or comma-separated levels, got '" + s + "'");
  return out;
}

static std::vector<int64_t> parse_int_list(const std::string& s, const std::string& flag) {
  std::vector<int64_t> out;
  for (const std::string& item : split_list(s)) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      check(used == item.size(), "");
    } catch (...) {
      throw Error("--" + flag + " expects comma-separated integers, got '" + s + "'");
    }
  }
  return out;
}

void add_train_execution_flag(Flags& f) {
  f.add("train-execution", "auto",
        "how masked conv/linear layers train on the CPU: dense, sparse (over the mask's nonzeros), or auto "
        "(sparse where the layer's mask keeps few enough weights to gain: see nn/train_execution.h)");
}

TrainConfig training_config(const Flags& f, int64_t bpe) {
  TrainConfig c;
  if (f.values().count("train-execution"))  // the commands that train declare it
    c.train_execution = parse_execution(f.str("train-execution"), "--train-execution");
  c.epochs = f.integer("epochs");
  check(c.epochs > 0, "--epochs must be positive");
  c.sgd.lr = static_cast<float>(f.number("lr"));
  c.sgd.momentum = static_cast<float>(f.number("momentum"));
  c.sgd.weight_decay = static_cast<float>(f.number("weight-decay"));
  c.sgd.nesterov = f.flag("nesterov");
  check(c.sgd.lr > 0 && c.sgd.momentum >= 0 && c.sgd.weight_decay >= 0, "--lr must be > 0, --momentum and --weight-decay >= 0");
  const std::string sync_bn = f.str("sync-bn");
  check(sync_bn == "on" || sync_bn == "off", "--sync-bn must be on or off, got '" + sync_bn + "'");
  c.sync_batchnorm = sync_bn == "on";
  c.label_smoothing = static_cast<float>(f.number("label-smoothing"));
  check(c.label_smoothing >= 0 && c.label_smoothing < 1, "--label-smoothing must be in [0, 1)");
  c.schedule.base_lr = c.sgd.lr;
  c.schedule.warmup_steps = f.integer("warmup-steps");
  check(c.schedule.warmup_steps >= 0, "--warmup-steps must be >= 0, got " + f.str("warmup-steps"));
  std::string s = f.str("schedule");
  if (s == "multistep") {
    c.schedule.kind = LrSchedule::Kind::MultiStep;
    for (int64_t e : parse_int_list(f.str("milestones"), "milestones")) {
      check(e >= 0, "--milestones must be epochs >= 0, got '" + f.str("milestones") + "'");
      c.schedule.milestones.push_back(e * bpe);
    }
    // Checked now: a bad factor would stop training only at the first milestone (epoch 80 by default).
    c.schedule.gamma = static_cast<float>(f.number("gamma"));
    check(c.schedule.gamma > 0, "--gamma must be positive, got " + f.str("gamma"));
  } else if (s == "cosine") {
    c.schedule.kind = LrSchedule::Kind::Cosine;
    c.schedule.total_steps = c.epochs * bpe;
  } else if (s == "constant") {
    c.schedule.kind = LrSchedule::Kind::Constant;
  } else {
    throw Error("--schedule must be multistep, cosine or constant, got '" + s + "'");
  }
  return c;
}

Model make_model(const Flags& f, const DataPair& data) {
  Model m = build_model(f.str("model"), data.train->num_classes(), data.train->image_shape());
  Rng rng(static_cast<uint64_t>(f.integer("seed")));
  init_model(m, rng);
  m.data_info = data.info;
  return m;
}

void add_normalization_flags(Flags& f) {
  f.add("mean", "", "input normalisation mean per channel, comma-separated (e.g. 0.4914,0.4822,0.4465); "
                    "overrides what the model file records (with --std)");
  f.add("std", "", "input normalisation std per channel, comma-separated (with --mean)");
}

bool normalization_from_flags(const Flags& f, int channels, ChannelStats* out) {
  const std::string m = f.str("mean"), s = f.str("std");
  if (m.empty() && s.empty()) return false;
  check(!m.empty() && !s.empty(), "--mean and --std go together");
  auto parse = [&](const std::string& text, const std::string& flag) {
    std::vector<float> v;
    for (const std::string& item : split_list(text)) {
      char* end = nullptr;
      const float x = std::strtof(item.c_str(), &end);
      check(!item.empty() && end == item.c_str() + item.size() && std::isfinite(x),
            "--" + flag + " expects comma-separated numbers, got '" + text + "'");
      v.push_back(x);
    }
    check(static_cast<int>(v.size()) == channels, "--" + flag + " needs " + std::to_string(channels) +
                                                      " values (one per input channel), got " + std::to_string(v.size()));
    return v;
  };
  out->mean = parse(m, "mean");
  out->std = parse(s, "std");
  for (float x : out->std) check(x > 0, "--std values must be positive");
  return true;
}

InputNormalization input_normalization(const Flags& f, const Model& model, const std::string& data_spec,
                                       const DatasetOptions& dopt, const Dataset* train_split) {
  InputNormalization n;
  const int channels = static_cast<int>(model.input_shape()[0]);
  const DataInfo& info = model.data_info;
  if (normalization_from_flags(f, channels, &n.stats)) {
    n.source = "given by --mean/--std";
  } else if (!info.mean.empty()) {
    n.stats.mean = info.mean, n.stats.std = info.std;
    n.source = "recorded in the model file";
  } else if (!data_spec.empty()) {
    n.stats = channel_stats(train_split ? *train_split : load_dataset(data_spec, true, dopt));
    n.assumed = true;
    n.source = "assumed: the per-channel mean/std of " + data_spec +
               "'s training split, as `cifar_prune train` computes them (the model file holds no input "
               "normalisation, an older file)";
  } else {
    // channel_stats of CIFAR-10's and of Fashion-MNIST's training sets (60000 images).
    n.stats = channels == 3 ? cifar10_stats() : ChannelStats{{0.2860406f}, {0.35302424f}};
    n.assumed = true;
    n.source = std::string("assumed: ") + (channels == 3 ? "CIFAR-10" : "Fashion-MNIST") +
               "'s training-set mean/std (the model file holds no input normalisation and names no data set; "
               "--data or --mean/--std give them)";
  }
  return n;
}

std::string hparams_json(const Flags& f, const std::string& command) {
  Json j;
  j.add("command", command);
  for (const auto& [k, v] : f.values())
    if (k != "threads" && k != "resume" && k != "out" && k != "device" && k != "train-execution") j.add(k, v);
  return j.str();
}

// Same run: the same settings, where a setting the stored run lacks (a flag added since it was
// made) holds that flag's default, the value the older build used without naming it.
static bool same_run(const std::string& stored, const std::string& now, const std::string& where, const Flags& f) {
  if (stored == now) return true;
  const auto old_map = parse_flat_json(stored, where), new_map = parse_flat_json(now, "the command line");
  for (const auto& [k, v] : old_map) {
    auto it = new_map.find(k);
    if (it == new_map.end() || it->second != v) return false;
  }
  for (const auto& [k, v] : new_map)
    if (!old_map.count(k) && (k == "command" || v != f.default_of(k))) return false;
  return true;
}

void prepare_run_dir(const std::string& dir, const std::string& hparams, bool resume, const Flags& f) {
  std::string hp = dir + "/hparams.json";
  const bool existed = file_exists(hp);
  dist::barrier();  // under mpirun: every rank has looked before rank 0 writes
  if (existed) {
    std::string old = read_text(hp);
    if (!old.empty() && old.back() == '\n') old.pop_back();
    check(same_run(old, hparams, hp, f), dir + ": holds a run with other hyper-parameters (see " + hp +
                              "); choose another --out or delete that folder");
    check(resume, dir + ": already holds this run; pass --resume to continue it, or choose another --out");
    return;
  }
  make_dirs(dir);
  write_text_atomic(hp, hparams + "\n");
}

}  // namespace dnns::app
