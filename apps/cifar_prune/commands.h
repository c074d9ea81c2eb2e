#pragma once

namespace dnns::app {
// Each returns the process exit status; argv[0] is the subcommand name.
int cmd_models(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_imp(int argc, char** argv);
int cmd_compact(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_import(int argc, char** argv);
int cmd_portfolio(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_predict(int argc, char** argv);
int cmd_data(int argc, char** argv);
}  // namespace dnns::app
