// cifar_prune: train, prune (IMP with rewinding), compact and package models, one
// subcommand per stage.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "apps/cifar_prune/commands.h"
#include "nn/distributed.h"

namespace {

const char* kUsage =
    "usage: cifar_prune COMMAND [flags]\n"
    "\n"
    "commands:\n"
    "  run       the whole pipeline: train, IMP, compact, portfolio, report\n"
    "  models    list the model zoo with parameter counts and forward FLOPs\n"
    "  train     train a zoo model on a data set (checkpoints, --resume)\n"
    "  imp       iterative magnitude pruning with weight rewinding (lottery tickets)\n"
    "  compact   exact structural compaction of IMP levels, verified on the test set\n"
    "  inspect   show what a model or checkpoint file holds\n"
    "  export    export a model for edge deployment: ONNX, or C arrays + the portable runtime\n"
    "  import    read a CNN from ONNX (e.g. exported by PyTorch) into a model file, zeros as masks\n"
    "  portfolio compact variants of chosen IMP levels, verified and measured, for the shifter\n"
    "  eval      accuracy, loss, per-class accuracy and confusion matrix of a model on a data set\n"
    "  predict   the top classes of image files (JPEG, PNG, ...) with probabilities\n"
    "  data      fetch a data set: `data fetch cifar10|cifar100|fashion-mnist [--dir D]`\n"
    "\n"
    "Run `cifar_prune COMMAND --help` for the flags of a command.\n";

}  // namespace

int main(int argc, char** argv) {
  dnns::dist::Session mpi(argc, argv);  // data-parallel under mpirun; nothing otherwise
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  try {
    if (cmd == "models") return dnns::app::cmd_models(argc - 1, argv + 1);
    if (cmd == "train") return dnns::app::cmd_train(argc - 1, argv + 1);
    if (cmd == "imp") return dnns::app::cmd_imp(argc - 1, argv + 1);
    if (cmd == "compact") return dnns::app::cmd_compact(argc - 1, argv + 1);
    if (cmd == "inspect") return dnns::app::cmd_inspect(argc - 1, argv + 1);
    if (cmd == "export") return dnns::app::cmd_export(argc - 1, argv + 1);
    if (cmd == "import") return dnns::app::cmd_import(argc - 1, argv + 1);
    if (cmd == "portfolio") return dnns::app::cmd_portfolio(argc - 1, argv + 1);
    if (cmd == "run") return dnns::app::cmd_run(argc - 1, argv + 1);
    if (cmd == "eval") return dnns::app::cmd_eval(argc - 1, argv + 1);
    if (cmd == "predict") return dnns::app::cmd_predict(argc - 1, argv + 1);
    if (cmd == "data") return dnns::app::cmd_data(argc - 1, argv + 1);
    std::fprintf(stderr, "cifar_prune: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ncifar_prune %s: error: %s\n", cmd.c_str(), e.what());
    dnns::dist::abort_job(1);  // under mpirun: the other ranks would wait for this one forever
    return 1;
  }
}
