// cifar_prune data fetch NAME: downloads, verifies and unpacks a data set (datasets/fetch.h).
#include <cstdio>

#include "apps/cifar_prune/commands.h"
#include "apps/cifar_prune/common.h"
#include "core/cli.h"
#include "core/error.h"
#include "datasets/fetch.h"

namespace dnns::app {

int cmd_data(int argc, char** argv) {
  std::string names;
  for (const FetchSource& s : fetch_sources()) names += (names.empty() ? "" : "|") + s.name;
  Flags f("cifar_prune data fetch " + names,
          "Downloads a data set's official files with `curl`, checks the MD5 checksums their publishers list\n"
          "(CIFAR: cs.toronto.edu/~kriz/cifar.html; Fashion-MNIST: its GitHub README), and unpacks them\n"
          "into --dir: cifar10 -> DIR/cifar-10-batches-bin, cifar100 -> DIR/cifar-100-binary,\n"
          "fashion-mnist -> DIR/fashion-mnist. Pass that folder to --data. Work happens in a temporary\n"
          "folder inside DIR that is renamed at the end, so a failed or interrupted fetch leaves no\n"
          "partial data set. A data set already in DIR is not fetched again.");
  f.add("dir", "data", "folder that receives the data set");
  f.add("url-base", "", "download from this URL prefix instead of the official one (a mirror)");
  f.add("md5", "", "FILE=HEX[,FILE=HEX...]: expect these MD5s instead of the published ones (a mirror's own files)");
  if (!f.parse(argc, argv, 1, 2)) return 0;
  const auto& pos = f.positional();
  check(!pos.empty() && pos[0] == "fetch", "cifar_prune data: the only action is `fetch` (see --help)");
  check(pos.size() == 2, "cifar_prune data fetch: name the data set: " + names);
  FetchOptions opt;
  opt.dir = f.str("dir");
  opt.url_base = f.str("url-base");
  for (const std::string& item : split_list(f.str("md5"))) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    check(eq != std::string::npos && eq > 0, "--md5 expects FILE=HEX, got '" + item + "'");
    opt.md5[item.substr(0, eq)] = item.substr(eq + 1);
  }
  const std::string dir = fetch_dataset(pos[1], opt);
  std::printf("%s: ready; use --data %s\n", pos[1].c_str(), dir.c_str());
  return 0;
}

}  // namespace dnns::app
