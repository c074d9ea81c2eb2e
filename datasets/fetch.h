// Data sets on request: downloads the official archives of CIFAR-10, CIFAR-100 (binary
// versions) and Fashion-MNIST, checks each file against the MD5 its publisher lists, and
// unpacks them into a folder that `--data` recognises (datasets/dataset.h, load_dataset).
//
// Nothing half-done is left behind: everything is downloaded and unpacked inside a temporary
// folder <dir>/.fetch-<name>.<pid>, the result is loaded once as a check, and only then renamed
// to its final place; on any failure the temporary folder is removed and an Error says what
// went wrong (no network, server down, HTTP error, checksum mismatch, bad archive).
//
// Downloads run the `curl` program (posix_spawnp, no shell): it is on every Debian system that
// has network tools (scripts/setup.sh installs it), handles proxies (https_proxy, ...), TLS and
// redirects, and keeps an HTTP client out of the libraries. Archives are unpacked by `tar`
// (Debian: essential), which refuses members with ".." and strips leading "/".
#pragma once
#include <map>
#include <string>
#include <vector>

namespace dnns {

struct FetchFile {
  std::string name;  // file name on the server (and while staged)
  std::string md5;   // the published MD5, 32 lowercase hex digits
};

struct FetchSource {
  std::string name;              // "cifar10", "cifar100", "fashion-mnist"
  std::string url_base;          // the official location; files are <url_base>/<file>
  std::vector<FetchFile> files;
  bool untar = false;            // files are .tar.gz archives holding `folder`; else kept as they are
  std::string folder;            // what ends up in the target dir: the --data folder
  std::vector<std::string> must_hold;  // files `folder` must hold after unpacking
};

const std::vector<FetchSource>& fetch_sources();
const FetchSource& fetch_source(const std::string& name);  // throws Error listing the known names

struct FetchOptions {
  std::string dir = "data";                  // the folder receives <dir>/<source.folder>
  std::string url_base;                      // "" = the official one
  std::map<std::string, std::string> md5;    // file name -> expected MD5 instead of the published one
  bool verbose = true;                       // progress lines on stderr
};

// Fetches `name` unless <dir>/<folder> exists already; returns that folder (the --data value).
std::string fetch_dataset(const std::string& name, const FetchOptions& options);

}  // namespace dnns
