// The PyTorch peer of our benchmarks (bench/torch_peer.py) computes the same function as our
// engine on compacted models: channel-mapped adds with biases and convs with border tables
// (docs/compaction.md). Its logits on our model file must match ours. Skipped (exit 77) where
// /usr/bin/python3 cannot import torch (Debian's python3-torch: scripts/setup.sh --with-torch).
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <cstdio>
#include <fstream>
#include <iterator>

#include "prune/compact.h"

using namespace dnns;
using dnns::testing::TempDir;

namespace {

const char* kPython = "/usr/bin/python3";

std::string file_text(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_floats(const std::string& path, const Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(t.numel() * sizeof(float)));
  REQUIRE_MESSAGE(f.good(), "cannot write " << path);
}

std::vector<float> read_floats(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

// The peer's logits for `model_file` on `x` (a REQUIRE fails when the peer fails).
std::vector<float> peer_logits(const TempDir& dir, const std::string& model_file, const Tensor& x) {
  write_floats(dir / "in.bin", x);
  const std::string script = std::string(DNNS_SOURCE_DIR) + "/bench/torch_peer.py";
  const int rc = testing::wait_exit(testing::spawn({kPython, script, "logits", "--threads", "1", "--model-file",
                                                    model_file, "--input", dir / "in.bin", "--output", dir / "out.bin"},
                                                   dir / "peer.log"));
  REQUIRE_MESSAGE(rc == 0, "torch_peer.py logits failed:\n" << file_text(dir / "peer.log"));
  return read_floats(dir / "out.bin");
}

bool torch_importable() {
  TempDir dir("torch_probe");
  const pid_t pid = testing::spawn({kPython, "-c", "import torch"}, dir / "probe.log");
  return testing::wait_exit(pid) == 0;
}

struct SkipWithoutTorch {
  SkipWithoutTorch() {
    if (access(kPython, X_OK) != 0 || !torch_importable()) {
      std::fprintf(stderr, "SKIPPED: %s cannot import torch (install python3-torch: scripts/setup.sh --with-torch)\n",
                   kPython);
      std::exit(77);  // CTest reports exit code 77 as "skipped" (SKIP_RETURN_CODE)
    }
  }
};

// Zeroes every weight of filter k of conv `name` (its mask too): the channel becomes a constant.
void kill_filter(Model& m, const std::string& name, int k) {
  auto& c = dynamic_cast<Conv2d&>(*m.nodes()[m.find(name)].layer);
  const std::string key = name + ".weight";
  if (!m.masks.count(key)) m.masks[key] = Tensor::full(c.weight.value.shape(), 1.0f);
  const int64_t per = c.weight.value.numel() / c.out_channels;
  for (int64_t q = 0; q < per; ++q) m.masks[key][k * per + q] = 0.0f;
  m.apply_masks();
}

}  // namespace

TEST_CASE("the PyTorch peer computes our compact ResNet-20 and VGG-11: mapped adds, border tables") {
  static SkipWithoutTorch skip;
  for (const std::string name : {"resnet20", "vgg11"}) {
    CAPTURE(name);
    Rng rng(11);
    Model m = build_model(name);
    init_model(m, rng);
    testing::randomize_batchnorm(m, rng);
    testing::random_masks(m, rng, 0.4f, 0.5f);
    if (name == "resnet20") {
      kill_filter(m, "blocks.1.conv2", 3);  // a dead branch filter on a live stream channel: a mapped add
      for (int k = 0; k < 16; ++k) kill_filter(m, "blocks.2.conv2", k);  // a branch of constants only
    }
    CompactReport rep;
    Model c = compact_model(m, &rep);
    // The model must hold what the peer has to get right, or the comparison proves little.
    REQUIRE(rep.position_bias_layers > 0);
    const std::string spec = c.spec();
    if (name == "resnet20") {
      REQUIRE(testing::contains(spec, "map0="));
      REQUIRE(testing::contains(spec, "bias=1 channels="));
      REQUIRE(testing::contains(spec, " in=0 "));
    }
    TempDir dir("torch_peer");
    c.save(dir / "compact.dnns");
    Tensor x = testing::random_images(3, {3, 32, 32}, rng);
    Tensor ours = c.forward(x, false);  // (3, 10)
    std::vector<float> theirs = peer_logits(dir, dir / "compact.dnns", x);
    REQUIRE(theirs.size() == static_cast<size_t>(ours.numel()));
    const float scale = testing::logit_scale(ours);
    float diff = 0.0f;
    for (int64_t i = 0; i < ours.numel(); ++i) diff = std::max(diff, std::fabs(ours[i] - theirs[i]));
    INFO("max |logit difference| " << diff << " at logit scale " << scale);
    CHECK(diff <= 1e-4f * scale);
    // And the compact model is the masked one: the peer's function is the pruned network's.
    CHECK(max_abs_diff(m.forward(x, false), ours) <= 1e-4f * scale);
    // The masked model's own file: sparse records, and masks stored as "ones at the support
    // of" their weight (format version 2), which the peer must decode to the same network.
    m.save(dir / "masked.dnns");
    REQUIRE(load_archive(dir / "masked.dnns").format_version == 2);
    std::vector<float> masked = peer_logits(dir, dir / "masked.dnns", x);
    REQUIRE(masked.size() == static_cast<size_t>(ours.numel()));
    float masked_diff = 0.0f;
    for (int64_t i = 0; i < ours.numel(); ++i) masked_diff = std::max(masked_diff, std::fabs(ours[i] - masked[i]));
    INFO("masked file: max |logit difference| " << masked_diff);
    CHECK(masked_diff <= 1e-4f * scale);
  }
}

TEST_CASE("the peer refuses a damaged model file with a message") {
  static SkipWithoutTorch skip;
  Rng rng(3);
  Model m = build_model("resnet20");
  init_model(m, rng);
  TempDir dir("torch_peer_bad");
  m.save(dir / "model.dnns");
  std::string bytes = file_text(dir / "model.dnns");
  bytes[bytes.size() / 2] ^= 0x5A;  // the checksum no longer matches
  {
    std::ofstream f(dir / "bad.dnns", std::ios::binary);
    f << bytes;
  }
  write_floats(dir / "in.bin", testing::random_images(1, {3, 32, 32}, rng));
  const std::string script = std::string(DNNS_SOURCE_DIR) + "/bench/torch_peer.py";
  const int rc = testing::wait_exit(testing::spawn({kPython, script, "logits", "--model-file", dir / "bad.dnns",
                                                    "--input", dir / "in.bin", "--output", dir / "out.bin"},
                                                   dir / "peer.log"));
  CHECK(rc != 0);
  CHECK(testing::contains(file_text(dir / "peer.log"), "checksum"));
}
