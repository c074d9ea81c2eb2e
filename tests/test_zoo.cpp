// The zoo: parameter counts match open_lth's, every model runs forward and backward, and
// a model survives its text spec and a file round trip unchanged.
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "nn/models/zoo.h"

using namespace dnns;

TEST_CASE("zoo parameter counts match open_lth / PyTorch") {
  CHECK(build_model("vgg16").num_params() == 14728266);
  CHECK(build_model("resnet20").num_params() == 272474);
  CHECK(build_model("resnet56").num_params() == 855770);
  CHECK(build_model("resnet110").num_params() == 1730714);
  CHECK(build_model("resnet18").num_params() == 11173962);
  CHECK(build_model("vgg11").num_params() == 9231114);
  CHECK(build_model("vgg19").num_params() == 20040522);
}

TEST_CASE("zoo forward MACs of a 32x32 image") {
  // ResNet-20: 40.55 M multiply-adds is the commonly quoted figure (convs + fc).
  int64_t r20 = build_model("resnet20").forward_macs();
  CHECK(r20 > 40'000'000);
  CHECK(r20 < 41'500'000);
  // VGG-16 (CIFAR): about 313 M multiply-adds.
  int64_t v16 = build_model("vgg16").forward_macs();
  CHECK(v16 > 310'000'000);
  CHECK(v16 < 316'000'000);
}

TEST_CASE("every zoo model runs forward (train and eval) and backward") {
  Rng rng(1);
  for (const std::string& name : zoo_names()) {
    if (name == "resnet110" || name == "vgg19") continue;  // same code as their siblings, slower
    CAPTURE(name);
    Model m = build_model(name, 10);
    init_model(m, rng);
    Tensor x({2, 3, 32, 32});
    for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
    Tensor y = m.forward(x, true);
    CHECK(y.shape() == Shape{2, 10});
    Tensor d = Tensor::full({2, 10}, 0.1f);
    m.backward(d);
    for (auto& p : m.params()) {
      REQUIRE(p.param->grad.defined());
      CHECK(p.param->grad.shape() == p.param->value.shape());
    }
    Tensor e = m.forward(x, false);
    CHECK(e.shape() == Shape{2, 10});
  }
}

TEST_CASE("models accept other input shapes and class counts") {
  Model m = build_model("resnet20", 7, {1, 28, 28});
  Tensor x({3, 1, 28, 28});
  CHECK(m.forward(x, false).shape() == Shape{3, 7});
  Model v = build_model("vgg11", 5, {1, 28, 28});
  CHECK(v.forward(x, false).shape() == Shape{3, 5});
  CHECK_THROWS_WITH_AS(build_model("vgg16", 10, {3, 8, 8}), doctest::Contains("pool"), Error);
  CHECK_THROWS_WITH_AS(build_model("resnet21"), doctest::Contains("unknown model 'resnet21'"), Error);
}

TEST_CASE("spec and file round trip keep the model exactly") {
  Rng rng(5);
  Model m = build_model("resnet20");
  init_model(m, rng);
  // A mask on one weight travels with the model.
  auto& w = *m.params()[0].param;
  Tensor mask = Tensor::full(w.value.shape(), 1.0f);
  mask[0] = 0.0f;
  m.masks[m.params()[0].name] = mask;
  m.apply_masks();

  Model s = Model::from_spec(m.spec());
  CHECK(s.spec() == m.spec());

  auto dir = std::filesystem::temp_directory_path() / ("dnns_zoo_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "m.dnns").string();
  m.save(path);
  Model l = Model::load(path);
  std::filesystem::remove_all(dir);

  CHECK(l.spec() == m.spec());
  CHECK(l.arch == "resnet20");
  REQUIRE(l.masks.size() == 1);
  CHECK(max_abs_diff(l.masks.begin()->second, mask) == 0.0f);
  Tensor x({2, 3, 32, 32});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  CHECK(max_abs_diff(m.forward(x, false), l.forward(x, false)) == 0.0f);
}

TEST_CASE("bad graph specs are refused with the line and the reason") {
  CHECK_THROWS_WITH_AS(Model::from_spec("hello"), doctest::Contains("not a dnnshifter graph spec"), Error);
  std::string good = build_model("resnet20").spec();
  std::string bad = good;
  bad.replace(bad.find("inputs=conv"), 11, "inputs=nope");
  CHECK_THROWS_WITH_AS(Model::from_spec(bad), doctest::Contains("unknown node 'nope'"), Error);
  std::string shape = good;
  shape.replace(shape.find("in=3 "), 5, "in=4 ");
  CHECK_THROWS_WITH_AS(Model::from_spec(shape), doctest::Contains("expected 4 input channels"), Error);
  std::string unknown = good;
  unknown.replace(unknown.find(" relu=0"), 7, " groups=2");
  CHECK_THROWS_WITH_AS(Model::from_spec(unknown), doctest::Contains("unknown attribute 'groups'"), Error);
  // Sizes are checked before anything is allocated (tests/fuzz/spec/crash-conv-huge-in-channels):
  // one line asking for 8.8 GB, and two lines each within the limit but over it together.
  std::string huge = "dnnshifter-graph 1\ninput x shape=1,5,5\nconv c inputs=x bias=0 in=122222222 kh=3 kw=3 out=2 pad=1 stride=1\noutput c\n";
  CHECK_THROWS_WITH_AS(Model::from_spec(huge), doctest::Contains("graph spec line 3 (node 'c'): this node brings the parameters declared to more than the limit"), Error);
  // A 2-weight layer, then one of exactly 2^27 weights (allowed alone): refused together, and
  // before the big one is allocated.
  std::string two = "dnnshifter-graph 1\ninput x shape=1,1,2\nflatten f inputs=x\nlinear a inputs=f bias=0 in=2 out=1\n"
                    "linear b inputs=a bias=0 in=1 out=134217728\noutput b\n";
  CHECK_THROWS_WITH_AS(Model::from_spec(two), doctest::Contains("graph spec line 5 (node 'b'): this node brings"), Error);
}

// The virtual memory of this process now, in bytes (VmSize of /proc/self/status).
static uint64_t vm_size_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) * 1024;  // "VmSize:  123 kB"
  FAIL("no VmSize in /proc/self/status");
  return 0;
}

TEST_CASE("a conv with a border table declares and allocates its table, not the (K, P, Q) map it covers") {
  // 4 filters, 4 x 5 outputs in 3 x 3 classes: weights 4*2*9, bias 4, table 4*3*3.
  const std::map<std::string, std::string> a = {{"in", "2"},       {"out", "4"},      {"kh", "3"},
                                                {"kw", "3"},       {"stride", "1"},   {"pad", "1"},
                                                {"bias", "1"},     {"pos_h", "4"},    {"pos_w", "5"},
                                                {"pos_rows", "0,1,1,2"}, {"pos_cols", "0,1,1,1,2"}};
  CHECK(declared_params(LayerKind::Conv, a) == 4 * 2 * 9 + 4 + 4 * 3 * 3);
  std::unique_ptr<Layer> l = make_layer(LayerKind::Conv, a);
  int64_t held = 0;
  for (Param* p : l->params()) held += p->value.numel();
  CHECK(held == declared_params(LayerKind::Conv, a));

  // An 8192 x 8192 output with one class: a table of 2 numbers. As a full map it would be
  // 2 x 8192 x 8192 = 2^27 floats (512 MiB): over the spec limit with the weights, and an
  // allocation the address-space limit below refuses.
  std::string zeros = "0";
  for (int i = 1; i < 8192; ++i) zeros += ",0";
  const std::string spec = "dnnshifter-graph 1\ninput x shape=1,8192,8192\nconv c inputs=x bias=0 in=1 kh=1 kw=1 out=2 "
                           "pad=0 pos_cols=" + zeros + " pos_h=8192 pos_rows=" + zeros + " pos_w=8192 relu=0 stride=1\noutput c\n";
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_AS, &old) == 0);
  rlimit tight = old;
  tight.rlim_cur = std::min<rlim_t>(old.rlim_max, vm_size_bytes() + (rlim_t(256) << 20));
  REQUIRE(setrlimit(RLIMIT_AS, &tight) == 0);
  std::string err;
  int64_t table = -1;
  try {
    Model m = Model::from_spec(spec);
    table = dynamic_cast<Conv2d&>(*m.nodes()[m.find("c")].layer).pos_bias.value.numel();
  } catch (const std::exception& e) {
    err = e.what();
  }
  REQUIRE(setrlimit(RLIMIT_AS, &old) == 0);
  CHECK_MESSAGE(err.empty(), err);
  CHECK(table == 2);
}
