#include "apps/cifar_prune/chains.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "nn/distributed.h"

namespace dnns::app {

void add_chain_flags(Flags& f) {
  f.add("seeds", "", "independent chains, one per seed (comma-separated), in --out/seed_S/ (replaces --seed)");
  f.add("chain-groups", "auto", "with --seeds under mpirun: groups of ranks the chains are spread over, each "
                                "group data-parallel (auto: as many as chains while the ranks divide evenly)");
}

std::vector<int64_t> parse_seeds(const std::string& text) {
  std::vector<int64_t> seeds;
  std::set<int64_t> seen;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    int64_t s = -1;
    try {
      size_t used = 0;
      s = std::stoll(item, &used);
      check(used == item.size(), "");
    } catch (...) {
      throw Error("--seeds expects comma-separated integers >= 0, got '" + text + "'");
    }
    check(s >= 0, "--seeds expects integers >= 0, got " + std::to_string(s));
    check(seen.insert(s).second, "--seeds names seed " + std::to_string(s) + " twice");
    seeds.push_back(s);
  }
  check(!seeds.empty(), "--seeds names no seed");
  return seeds;
}

std::string chain_dir(const std::string& out, int64_t seed) { return out + "/seed_" + std::to_string(seed); }

int chain_groups(const std::string& value, int chains, int ranks) {
  if (value == "auto") {
    int g = 1;
    for (int d = 1; d <= std::min(chains, ranks); ++d)
      if (ranks % d == 0) g = d;
    return g;
  }
  int g = 0;
  try {
    size_t used = 0;
    g = std::stoi(value, &used);
    check(used == value.size(), "");
  } catch (...) {
    throw Error("--chain-groups expects 'auto' or a positive integer, got '" + value + "'");
  }
  check(g >= 1, "--chain-groups must be >= 1, got " + value);
  check(g <= chains, "--chain-groups " + value + " is more than the " + std::to_string(chains) +
                         " chain(s) of --seeds (a group would have nothing to train)");
  check(ranks % g == 0, "--chain-groups " + value + " does not divide the " + std::to_string(ranks) +
                            " rank(s) of this job into equal groups" +
                            (ranks == 1 ? " (run it under mpirun -np N, N a multiple of it, or leave it at auto)" : ""));
  return g;
}

namespace {

struct Chain {
  int64_t seed = 0;
  ImpPart part = ImpPart::Both;
  std::string name() const {
    return "seed " + std::to_string(seed) + (part == ImpPart::RandomOnly ? " random" : "");
  }
};

std::string fmt_pct(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", 100.0 * x);
  return b;
}

// Mean and standard deviation (over seeds, n-1) of the values, as "mean ± sd" in percent.
std::string mean_sd(const std::vector<double>& v) {
  if (v.empty()) return "";
  double m = 0;
  for (double x : v) m += x;
  m /= double(v.size());
  if (v.size() == 1) return fmt_pct(m);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return fmt_pct(m) + " ± " + fmt_pct(std::sqrt(ss / double(v.size() - 1)));
}

// Rank 0 of the job, at the end: what every group root sent (blocks of "seed S" then one
// level_record_json line per level), back into seed -> records, in --seeds order.
std::vector<std::pair<int64_t, std::vector<LevelRecord>>> parse_gathered(const std::vector<std::string>& parts,
                                                                         const std::vector<int64_t>& seeds) {
  std::map<int64_t, std::map<std::pair<int, int>, LevelRecord>> by_seed;  // seed -> (level, random?) -> record
  for (const std::string& part : parts) {
    std::istringstream is(part);
    std::string line;
    std::map<std::pair<int, int>, LevelRecord>* cur = nullptr;
    while (std::getline(is, line)) {
      if (line.rfind("seed ", 0) == 0) {
        cur = &by_seed[std::stoll(line.substr(5))];
      } else if (!line.empty()) {
        check(cur != nullptr, "chains: a gathered level record without its seed");
        // A seed's two parts both report the magnitude levels the random part read back.
        LevelRecord r = parse_level_record(line, "the levels gathered from a group of ranks");
        (*cur)[{r.level, r.chain == "random" ? 1 : 0}] = r;
      }
    }
  }
  std::vector<std::pair<int64_t, std::vector<LevelRecord>>> out;
  for (int64_t s : seeds) {
    auto it = by_seed.find(s);
    check(it != by_seed.end(), "chains: no group of ranks reported chain seed " + std::to_string(s));
    std::vector<LevelRecord> recs;  // levels.csv's order: level 0, then each level's magnitude and random
    for (auto& [key, r] : it->second) recs.push_back(r);
    out.emplace_back(s, recs);
  }
  return out;
}

}  // namespace

std::string chains_markdown(const std::vector<std::pair<int64_t, std::vector<LevelRecord>>>& chains) {
  // (chain kind, level) -> seed -> record
  std::map<int, std::map<int64_t, const LevelRecord*>> mag, rnd;
  for (const auto& [seed, recs] : chains)
    for (const LevelRecord& r : recs) (r.chain == "random" ? rnd : mag)[r.level][seed] = &r;
  std::set<int> levels;
  for (const auto& [l, unused] : mag) levels.insert(l);
  for (const auto& [l, unused] : rnd) levels.insert(l);
  const bool with_random = !rnd.empty(), several = chains.size() > 1;
  std::ostringstream os;
  os << "Test accuracy (%) per level and chain (magnitude pruning";
  if (with_random) os << "; random pruning: the baseline, same counts per layer";
  os << "). Level 0 is each seed's dense network.\n\n| level | % remaining |";
  for (const auto& [seed, unused] : chains) os << " seed " << seed << " |";
  if (several) os << " mean ± sd |";
  if (with_random) {
    for (const auto& [seed, unused] : chains) os << " random, seed " << seed << " |";
    if (several) os << " random mean ± sd |";
  }
  os << "\n|---:|---:|";
  const size_t cols = (chains.size() + (several ? 1 : 0)) * (with_random ? 2 : 1);
  for (size_t i = 0; i < cols; ++i) os << "---:|";
  os << "\n";
  auto cells = [&](const std::map<int64_t, const LevelRecord*>* row) {
    std::vector<double> v;
    for (const auto& [seed, unused] : chains) {
      const LevelRecord* r = nullptr;
      if (row) {
        auto it = row->find(seed);
        if (it != row->end()) r = it->second;
      }
      os << ' ' << (r ? fmt_pct(r->test_accuracy) : "") << " |";
      if (r) v.push_back(r->test_accuracy);
    }
    if (several) os << ' ' << mean_sd(v) << " |";
  };
  for (int level : levels) {
    const std::map<int64_t, const LevelRecord*>* m = mag.count(level) ? &mag.at(level) : nullptr;
    const std::map<int64_t, const LevelRecord*>* r = rnd.count(level) ? &rnd.at(level) : nullptr;
    const LevelRecord* any = m ? m->begin()->second : r->begin()->second;
    os << "| " << level << " | " << fmt_pct(any->density()) << " |";
    cells(m);
    if (with_random) cells(level == 0 ? m : r);  // level 0 is shared by both chains of a seed
    os << "\n";
  }
  return os.str();
}

void wait_for_file(const std::string& path, const std::string& what) {
  if (dist::is_root() && !file_exists(path)) {
    std::fprintf(stderr, "%s: waiting for %s\n", what.c_str(), path.c_str());
    while (!file_exists(path)) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  dist::wait_idle();
}

int run_chains(const Flags& f, const RunOneImp& run_one) {
  const std::vector<int64_t> seeds = parse_seeds(f.str("seeds"));
  check(!f.given("seed"), "--seed and --seeds exclude each other: each chain of --seeds takes its seed from there");
  const std::string out = f.str("out");
  // Magnitude chains first: a random chain waits only for its seed's magnitude chain, which comes
  // earlier in this order, so whatever the groups, the first unfinished chain can always proceed.
  std::vector<Chain> chains_list;
  const bool random = f.flag("random-baseline");
  for (int64_t s : seeds) chains_list.push_back({s, random ? ImpPart::MagnitudeOnly : ImpPart::Both});
  if (random)
    for (int64_t s : seeds) chains_list.push_back({s, ImpPart::RandomOnly});
  const int nchains = static_cast<int>(chains_list.size()), ranks = dist::world_size();
  const int groups = chain_groups(f.str("chain-groups"), nchains, ranks);
  const bool resume = f.flag("resume");

  // Refused before any chain starts training (every rank looks; the job's rank 0 then writes).
  check(!file_exists(out + "/hparams.json"),
        out + ": holds a single IMP run (hparams.json); give the chains of --seeds a folder of their own");
  if (!resume)
    for (int64_t s : seeds)
      check(!file_exists(chain_dir(out, s) + "/hparams.json"),
            chain_dir(out, s) + ": already holds chain seed " + std::to_string(s) +
                "; pass --resume to continue the chains, or choose another --out");
  dist::barrier();
  make_dirs(out);
  std::string seed_list;
  for (int64_t s : seeds) {
    if (!seed_list.empty()) seed_list += ',';
    seed_list += std::to_string(s);
  }
  write_text_atomic(out + "/chains.json",
                    Json().add("seeds", seed_list).add("chain_groups", groups).add("ranks", ranks).str() + "\n");
  if (dist::world_rank() == 0)
    std::fprintf(stderr, "chains: %d (seeds %s%s) over %d group(s) of %d rank(s) into %s\n", nchains,
                 seed_list.c_str(), random ? ", magnitude and random each" : "", groups, ranks / groups, out.c_str());

  // From here until join_world, rank(), size(), the collectives and the file writer are the group's.
  const int group = dist::split_world(groups);
  std::string mine;  // this group's chains, for the job's rank 0 (from the group's rank 0 only)
  for (int i = group; i < nchains; i += groups) {
    const Chain& ch = chains_list[size_t(i)];
    Flags c = f;
    c.set("seed", std::to_string(ch.seed));
    c.set("out", chain_dir(out, ch.seed));
    c.set("seeds", "");
    std::vector<LevelRecord> recs;
    try {
      recs = run_one(c, ch.name() + ": ", ch.part);
    } catch (const std::exception& e) {
      const int first = group * (ranks / groups), last = first + ranks / groups - 1;
      std::string where = "rank " + std::to_string(first);
      if (last > first) where = "ranks " + std::to_string(first) + "-" + std::to_string(last);
      throw Error("chain " + ch.name() + " (" + chain_dir(out, ch.seed) + ", " + where + ") failed: " + e.what());
    }
    if (dist::is_root()) {
      mine += "seed " + std::to_string(ch.seed) + "\n";
      for (const LevelRecord& r : recs) mine += level_record_json(r);
    }
  }
  // Groups that finished early wait without spinning (they would take cores from the others).
  dist::world_wait_idle();
  dist::join_world();
  std::vector<std::string> parts = dist::world_gather(mine);
  if (dist::world_rank() != 0) return 0;

  auto chains = parse_gathered(parts, seeds);
  std::string csv;
  for (const auto& [seed, recs] : chains) {
    std::istringstream is(levels_csv(recs));
    std::string line;
    bool header = true;
    while (std::getline(is, line)) {
      if (header) {
        if (csv.empty()) csv = "seed," + line + "\n";
        header = false;
        continue;
      }
      csv += std::to_string(seed) + "," + line + "\n";
    }
  }
  write_text_atomic(out + "/chains.csv", csv);
  const std::string md = "# IMP chains: " + std::to_string(seeds.size()) + " seed(s)" +
                         (random ? ", magnitude and random pruning each" : "") + "\n\n" + chains_markdown(chains) +
                         "\nEach chain's folder (seed_S/) holds its report.md, levels.csv and plot.\n";
  write_text_atomic(out + "/chains.md", md);
  std::printf("\n%s\nresults in %s (chains.md, chains.csv; each chain in seed_S/)\n", md.c_str(), out.c_str());
  return 0;
}

}  // namespace dnns::app
