#include "prune/imp.h"

#include "nn/train_execution.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/rng.h"
#include "nn/distributed.h"
#include "nn/run.h"

namespace dnns {

int64_t default_rewind_step(const std::string& arch) {
  if (arch.rfind("vgg", 0) == 0) return 2000;
  if (arch.rfind("resnet", 0) == 0) return 500;
  throw Error("no default rewind step for architecture '" + arch + "' (open_lth's are 2000 for VGG, 500 for "
              "ResNets); pass --rewind-step");
}

std::string imp_level_dir(const std::string& out, const std::string& chain, int level) {
  std::string base = chain == "random" ? out + "/random" : out;
  return base + "/level_" + std::to_string(level);
}

void rewind_to(Trainer& trainer, const Archive& rewind_point, const MaskSet& masks, const std::string& where) {
  trainer.restore(rewind_point, where);  // weights, batchnorm state, step (and K's momentum: dropped below)
  trainer.optimizer().reset();
  set_masks(trainer.model(), masks);
}

namespace {

using Clock = std::chrono::steady_clock;

// The masks stored in a model file ("mask:<weight>" tensors), without building the model.
MaskSet masks_in_model_file(const std::string& path) {
  Archive a = load_archive(path);
  check(a.kind == "model", path + ": holds a '" + a.kind + "', not a model");
  MaskSet out;
  for (auto& [name, t] : a.tensors)
    if (name.rfind("mask:", 0) == 0) out[name.substr(5)] = t;
  check(!out.empty(), path + ": the model holds no masks (not written by an IMP run?)");
  return out;
}

bool same_masks(const MaskSet& a, const MaskSet& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || it->second.shape() != t.shape() || it->second.to_vector() != t.to_vector()) return false;
  }
  return true;
}

// Training time of every epoch recorded in a level's log (all sessions that worked on it).
double logged_train_seconds(const std::string& log_path) {
  if (!file_exists(log_path)) return 0;
  std::istringstream is(read_text(log_path));
  std::string line;
  double total = 0;
  int n = 0;
  while (std::getline(is, line)) {
    ++n;
    if (line.empty()) continue;
    auto m = parse_flat_json(line, log_path + " line " + std::to_string(n));
    auto it = m.find("seconds");
    if (it != m.end()) total += std::strtod(it->second.c_str(), nullptr);
  }
  return total;
}

// Data-parallel IMP: rank 0's masks to every rank (names and shapes, then the values).
void share_masks(MaskSet& masks) {
  if (dist::size() <= 1) return;
  std::string layout;  // per mask: its name, then "rank dims..." (one line each)
  if (dist::is_root()) {
    std::ostringstream os;
    for (const auto& [name, t] : masks) {
      os << name << '\n' << t.ndim();
      for (int64_t d : t.shape()) os << ' ' << d;
      os << '\n';
    }
    layout = os.str();
  }
  dist::broadcast(layout);
  if (!dist::is_root()) {
    masks.clear();
    std::istringstream is(layout);
    std::string name, dims;
    while (std::getline(is, name) && std::getline(is, dims)) {
      std::istringstream ds(dims);
      int nd = 0;
      ds >> nd;
      Shape shape(nd);
      for (int64_t& d : shape) ds >> d;
      masks[name] = Tensor(shape);
    }
  }
  for (auto& [name, t] : masks) dist::broadcast(t);
}

std::string pct(double d) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", 100.0 * d);
  return b;
}

struct LevelJob {
  std::string chain;  // "magnitude" | "random"
  int level = 0;
  MaskSet masks;      // the mask the level trains with
};

class ImpRun {
 public:
  ImpRun(const Model& initial, const TrainConfig& cfg, BatchSource& train, BatchSource& test, const std::string& out,
         const ImpOptions& opt)
      : initial_(initial), cfg_(cfg), train_(train), test_(test), out_(out), opt_(opt) {
    opt_.progress = opt.progress && dist::is_root();  // one voice in a data-parallel run
    total_steps_ = cfg.epochs * train.batches_per_epoch();
    rewind_path_ = out + "/rewind.dnns";
  }

  // Whether level `job` has finished (its metrics.json, written last, exists): level() then
  // only reads its record and needs no masks.
  bool finished(const LevelJob& job) const {
    return file_exists(imp_level_dir(out_, job.chain, job.level) + "/metrics.json");
  }

  // Trains (or resumes, or reads the finished) level `job`.
  LevelRecord level(const LevelJob& job) {
    const std::string dir = imp_level_dir(out_, job.chain, job.level);
    const std::string metrics = dir + "/metrics.json", ckpt = dir + "/checkpoint.dnns", log = dir + "/log.jsonl";
    if (file_exists(metrics)) {
      std::remove(ckpt.c_str());  // left behind by a session stopped right after finishing
      LevelRecord r = parse_level_record(read_text(metrics), metrics);
      check(r.chain == job.chain && r.level == job.level, metrics + ": holds " + r.chain + " level " +
                                                              std::to_string(r.level) + ", expected " + job.chain +
                                                              " level " + std::to_string(job.level));
      return r;
    }
    make_dirs(dir);
    const auto t0 = Clock::now();
    const std::string label = opt_.label + (job.chain == "random" ? "random level " : "level ") + std::to_string(job.level) + "/" +
                              std::to_string(opt_.levels);
    Model work = initial_.clone();
    Trainer trainer(work, cfg_);
    bool resumed = false;
    if (opt_.resume && file_exists(ckpt)) {
      trainer.load_checkpoint(ckpt);
      check(same_masks(current_masks(work), job.masks),
            ckpt + ": its mask differs from the one the previous level gives; the run folder was altered "
                   "(delete " + dir + " to redo this level)");
      resumed = true;
      if (opt_.progress)
        std::fprintf(stderr, "%s: resumed %s at step %lld\n", label.c_str(), ckpt.c_str(), (long long)trainer.step());
    } else {
      write_text_atomic(log, "");  // a fresh start: no epochs of an abandoned attempt in the log
      if (job.level == 0) {
        set_masks(work, job.masks);
      } else {
        rewind_to(trainer, load_archive(rewind_path_), job.masks, rewind_path_);
        check(trainer.step() == opt_.rewind_step, rewind_path_ + ": holds step " + std::to_string(trainer.step()) +
                                                      ", but this run rewinds to step " +
                                                      std::to_string(opt_.rewind_step));
      }
    }
    if (job.level == 0 && trainer.step() > opt_.rewind_step)
      check(file_exists(rewind_path_), rewind_path_ + ": missing, and level 0 is past the rewind step " +
                                           std::to_string(opt_.rewind_step) + " (delete " + dir +
                                           " to retrain the dense network)");

    // Every rank starts the level from the same weights and mask (a run folder that is not
    // shared between the machines, or a broken broadcast, stops here).
    dist::check_same(dist::fingerprint(work), label + ": the model and mask at step " + std::to_string(trainer.step()));
    SparsityReport sp = sparsity_report(work, opt_.ignore);
    const std::string plan = training_plan_summary(plan_training_execution(work, cfg_.train_execution));
    if (opt_.progress)
      std::fprintf(stderr, "%s: %s of %lld prunable weights remain, training steps %lld..%lld; %s (--train-execution %s)\n",
                   label.c_str(), pct(sp.density()).c_str(), (long long)sp.total, (long long)trainer.step(),
                   (long long)total_steps_, plan.c_str(), execution_name(cfg_.train_execution));

    RunOptions ro;
    ro.checkpoint_path = ckpt;
    ro.log_path = log;
    ro.label = label;
    ro.total_steps = total_steps_;
    ro.progress = opt_.progress;
    if (job.level == 0) {
      ro.capture_step = opt_.rewind_step;
      ro.capture_path = rewind_path_;
    }
    RunResult res = run_training(trainer, train_, test_, ro);

    work.save(dir + "/model.dnns");  // the archive holds CPU copies of device tensors
    write_text_atomic(dir + "/sparsity.json", sparsity_json(sp));
    write_text_atomic(dir + "/sparsity.txt", sparsity_table(sp));
    LevelRecord r;
    r.chain = job.chain;
    r.level = job.level;
    r.remaining = sp.remaining;
    r.total = sp.total;
    r.test_accuracy = res.test.accuracy;
    r.test_loss = res.test.loss;
    r.test_examples = res.test.examples;
    r.train_accuracy = res.train_accuracy;
    r.train_loss = res.train_loss;
    r.steps = trainer.step();
    r.train_seconds = logged_train_seconds(log);
    r.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.resumed = resumed;
    write_text_atomic(metrics, level_record_json(r));  // last: the level is finished
    if (dist::is_root()) std::remove(ckpt.c_str());
    dist::barrier();  // the other ranks read this level's files only once rank 0 wrote them
    if (opt_.progress)
      std::fprintf(stderr, "%s: done, %s of weights remain, test accuracy %.2f%%\n", label.c_str(),
                   pct(r.density()).c_str(), 100.0 * r.test_accuracy);
    return r;
  }

  // ImpPart::RandomOnly: waits (without spinning) until magnitude level L, trained by another
  // group of ranks in this folder, has finished.
  void wait_for_magnitude(int L) {
    const std::string metrics = imp_level_dir(out_, "magnitude", L) + "/metrics.json";
    if (dist::is_root() && !file_exists(metrics)) {
      if (opt_.progress)
        std::fprintf(stderr, "%srandom level %d: waiting for magnitude level %d (%s)\n", opt_.label.c_str(), L, L,
                     metrics.c_str());
      while (!file_exists(metrics)) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    dist::wait_idle();  // the group's other ranks wait for its rank 0
  }

  std::vector<LevelRecord> run() {
    if (opt_.part == ImpPart::RandomOnly) return run_random_part();
    std::vector<LevelRecord> records;
    records.push_back(level({"magnitude", 0, ones_masks_of_initial()}));
    for (int L = 1; L <= opt_.levels; ++L) {
      // Magnitude chain: prune level L-1's trained weights. A finished level (resumed run)
      // is only read back: its masks are not recomputed.
      LevelJob mag{"magnitude", L, {}};
      // The decision is made once, by rank 0, and sent to the others (share_masks).
      if (!finished(mag) && dist::is_root()) {
        Model prev = Model::load(imp_level_dir(out_, "magnitude", L - 1) + "/model.dnns");
        mag.masks = prune_by_magnitude(prev, opt_.prune_fraction, opt_.strategy, opt_.ignore);
      }
      share_masks(mag.masks);
      records.push_back(level(mag));
      if (!opt_.random_baseline || opt_.part == ImpPart::MagnitudeOnly) continue;
      records.push_back(level(random_job(L, mag.masks)));
    }
    return records;
  }

  // Random level L: random level L-1's survivors, thinned to magnitude level L's counts (the
  // masks of a finished magnitude level are those its model file holds); rank 0 decides.
  LevelJob random_job(int L, MaskSet magnitude_masks) {
    LevelJob rnd{"random", L, {}};
    if (!finished(rnd) && dist::is_root()) {
      if (magnitude_masks.empty())
        magnitude_masks = masks_in_model_file(imp_level_dir(out_, "magnitude", L) + "/model.dnns");
      MaskSet current =
          masks_in_model_file(imp_level_dir(out_, L == 1 ? "magnitude" : "random", L - 1) + "/model.dnns");
      Rng rng(mix_seed(opt_.seed, static_cast<uint64_t>(L), 0x52414E44u /* "RAND" */));
      rnd.masks = prune_randomly_like(initial_, current, magnitude_masks, rng);
    }
    share_masks(rnd.masks);
    return rnd;
  }

  // ImpPart::RandomOnly: the random levels, each once the magnitude level it follows is there;
  // then the magnitude levels' records, read back, for the reports.
  std::vector<LevelRecord> run_random_part() {
    std::vector<LevelRecord> random;
    for (int L = 1; L <= opt_.levels; ++L) {
      wait_for_magnitude(L);
      random.push_back(level(random_job(L, {})));
    }
    wait_for_magnitude(0);  // with --levels 0 nothing was waited for yet
    std::vector<LevelRecord> records;
    for (int L = 0; L <= opt_.levels; ++L) {
      records.push_back(level({"magnitude", L, {}}));  // finished: only read back
      if (L >= 1) records.push_back(random[size_t(L - 1)]);
    }
    return records;
  }

 private:
  MaskSet ones_masks_of_initial() { return ones_masks(initial_); }

  const Model& initial_;
  TrainConfig cfg_;
  BatchSource& train_;
  BatchSource& test_;
  std::string out_;
  ImpOptions opt_;
  int64_t total_steps_ = 0;
  std::string rewind_path_;
};

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

}  // namespace

std::vector<LevelRecord> run_imp(const Model& initial, const TrainConfig& cfg, BatchSource& train, BatchSource& test,
                                 const std::string& out, const ImpOptions& opt) {
  const int64_t bpe = train.batches_per_epoch();
  check(bpe > 0, "imp: the training data yields no batches");
  const int64_t total = cfg.epochs * bpe;
  check(opt.levels >= 0, "imp: the number of levels must be >= 0, got " + std::to_string(opt.levels));
  check(opt.prune_fraction > 0 && opt.prune_fraction < 1,
        "imp: the prune fraction must be in (0, 1), got " + std::to_string(opt.prune_fraction));
  check(opt.rewind_step >= 0 && opt.rewind_step < total,
        "imp: the rewind step " + std::to_string(opt.rewind_step) + " is not before the end of training (" +
            std::to_string(cfg.epochs) + " epochs x " + std::to_string(bpe) + " batches = " + std::to_string(total) +
            " steps); pass a smaller --rewind-step");
  check_prune_ignore(initial, opt.ignore);
  make_dirs(out);
  check(opt.resume || !file_exists(imp_level_dir(out, "magnitude", 0)),
        out + ": already holds IMP levels; pass --resume to continue or extend that run, or choose another folder");
  dist::barrier();  // every rank has looked at the folder before rank 0 adds to it

  write_text_atomic(out + "/imp.json", Json()
                                           .add("arch", initial.arch)
                                           .add("levels", opt.levels)
                                           .add("rewind_step", opt.rewind_step)
                                           .add("prune_fraction", opt.prune_fraction)
                                           .add("prune_strategy", prune_strategy_name(opt.strategy))
                                           .add("prune_ignore", join(opt.ignore))
                                           .add("random_baseline", opt.random_baseline)
                                           .add("seed", static_cast<int64_t>(opt.seed))
                                           .add("epochs", cfg.epochs)
                                           .add("batches_per_epoch", bpe)
                                           .add("total_steps", total)
                                           .str() +
                                           "\n");

  check(opt.part != ImpPart::RandomOnly || opt.random_baseline, "imp: the random part of a run without the random baseline");
  std::vector<LevelRecord> records = ImpRun(initial, cfg, train, test, out, opt).run();
  if (opt.part == ImpPart::MagnitudeOnly && opt.random_baseline) return records;  // the random part reports

  write_text_atomic(out + "/levels.csv", levels_csv(records));
  std::ostringstream md;
  md << "# IMP: " << initial.arch << ", " << opt.levels << " levels of " << opt.prune_fraction * 100
     << "% (" << prune_strategy_name(opt.strategy) << " magnitude), rewind to step " << opt.rewind_step << "\n\n"
     << "Training per level: " << cfg.epochs << " epochs of " << bpe << " steps (" << total
     << " steps; levels >= 1 retrain steps " << opt.rewind_step << ".." << total << ").  \n"
     << "Layers kept dense: " << (opt.ignore.empty() ? "none" : join(opt.ignore)) << ".  \n"
     << "Weights remaining counts every conv and linear weight.\n\n"
     << levels_markdown(records) << "\n![accuracy vs weights remaining](accuracy_vs_sparsity.svg)\n";
  write_text_atomic(out + "/report.md", md.str());
  write_text_atomic(out + "/accuracy_vs_sparsity.svg",
                    accuracy_vs_sparsity_svg(records, initial.arch + ": test accuracy vs weights remaining"));
  return records;
}

}  // namespace dnns
