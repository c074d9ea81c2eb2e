// Independent IMP chains (`cifar_prune imp --seeds S1,S2,...`, also through `run`): one
// complete IMP run per seed, each the run `cifar_prune imp --seed S --out DIR/seed_S` makes alone,
// spread over the ranks of an MPI job. With --random-baseline each seed's run is two chains: the
// magnitude chain and the random-pruning chain (ImpPart), which trains its level L as soon as the
// magnitude chain has finished level L (it needs its counts per layer), one level behind it.
//
// Under mpirun -np N with --chain-groups G, the ranks form G groups of N/G consecutive ranks
// (dist::split_world); chain i goes to group i mod G, and each group trains its chains one after
// the other, data-parallel over its ranks (its rank 0 writes the chain's folder). A chain's result
// does not depend on which group ran it nor on the other chains: with groups of one rank it is
// bit-identical to the chain run alone in one process (same flags, one thread each); with larger
// groups, to the chain run alone on that many ranks. Without MPI the chains run one after the
// other. At the end rank 0 of the job gathers every chain's levels and writes
//   DIR/chains.json  the seeds and the groups of the last session
//   DIR/chains.csv   seed, then levels.csv's columns, one row per level per chain
//   DIR/chains.md    test accuracy per level (rows) and chain (columns), mean and spread over seeds
// --resume resumes every chain (finished levels are read back, not retrained). A chain that fails
// stops the whole job (its error names the chain; main() aborts every rank).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/cli.h"
#include "prune/imp.h"
#include "prune/report.h"

namespace dnns::app {

// Declares --seeds and --chain-groups.
void add_chain_flags(Flags& f);

// "1,2,3" -> {1, 2, 3}: distinct integers >= 0; throws Error naming --seeds otherwise.
std::vector<int64_t> parse_seeds(const std::string& text);
std::string chain_dir(const std::string& out, int64_t seed);  // "<out>/seed_<seed>"

// --chain-groups for `chains` chains on `ranks` ranks: "auto" is the largest divisor of `ranks`
// not above `chains`; a number must divide `ranks` and not exceed `chains`. Throws Error naming
// the flag.
int chain_groups(const std::string& flag_value, int chains, int ranks);

// Runs the chains of --seeds (see above): `run_one(flags, label, part)` runs `part` of one IMP
// run with the chain's --seed and --out, on this rank's group, and returns its levels. Returns
// the exit status.
using RunOneImp = std::function<std::vector<LevelRecord>(const Flags&, const std::string& label, ImpPart part)>;
int run_chains(const Flags& f, const RunOneImp& run_one);

// Waits until `path` exists (this group's rank 0 polls every 200 ms; the other ranks wait
// without spinning): a file another group of ranks writes.
void wait_for_file(const std::string& path, const std::string& what);

// chains.md's table from every chain's levels (seed -> records).
std::string chains_markdown(const std::vector<std::pair<int64_t, std::vector<LevelRecord>>>& chains);

}  // namespace dnns::app
