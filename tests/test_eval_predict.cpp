// What a model file records about its data (DataInfo: round trip, older files, refusals,
// carried by clone, checkpoints and compaction), `cifar_prune eval` (its numbers equal the
// trainer's and an independent evaluation of a compact model; the confusion matrix adds up),
// `cifar_prune predict` (its probabilities equal the softmax of the model's forward on the
// image, normalised independently here; resizing as the image-folder reader; what an older
// file makes it assume), the heat map SVG, MD5, and `cifar_prune data fetch` against a local
// HTTP server (good archives, a bad checksum, a missing file, the server down, a wrong
// layout; nothing partial left behind).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/stb_write.h"

#include "core/json.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/md5.h"
#include "datasets/dataset.h"
#include "datasets/fetch.h"
#include "datasets/loader.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"
#include "prune/compact.h"
#include "prune/report.h"
#include "test_util.h"

extern char** environ;
using namespace dnns;
namespace fs = std::filesystem;

namespace {

const std::string kBin = std::string(DNNS_BINARY_DIR) + "/bin/cifar_prune";

struct Run {
  int status = -1;
  std::string out, err;
};

// Runs `args` (args[0] found on PATH when it has no '/'), stdout and stderr captured.
Run run(const std::vector<std::string>& args, const fs::path& scratch) {
  const std::string o = (scratch / "stdout.txt").string(), e = (scratch / "stderr.txt").string();
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, o.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, e.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE(rc == 0);
  int status = 0;
  waitpid(pid, &status, 0);
  Run r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(o);
  r.err = read_text(e);
  return r;
}

fs::path scratch_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("dnns_evp_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

DataInfo sample_info() {
  DataInfo d;
  d.dataset = "/data/my set";
  d.class_names = {"plane", "car", "bird with, comma", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  d.channel_order = "RGB";
  d.mean = {0.4914f, 0.4822f, 0.1f / 3};
  d.std = {0.2470f, 0.2435f, 0.2616f};
  return d;
}

void check_same_info(const DataInfo& a, const DataInfo& b) {
  CHECK(a.dataset == b.dataset);
  CHECK(a.class_names == b.class_names);
  CHECK(a.channel_order == b.channel_order);
  CHECK(a.mean == b.mean);  // bit-exact: %.9g round-trips every float
  CHECK(a.std == b.std);
}

Model small_model(uint64_t seed) {
  Model m = build_model("resnet20", 10, {3, 32, 32});
  Rng rng(seed);
  init_model(m, rng);
  testing::randomize_batchnorm(m, rng);
  return m;
}

}  // namespace

TEST_CASE("md5: RFC 1321 test suite, chunked updates") {
  CHECK(md5_hex("") == "d41d8cd98f00b204e9800998ecf8427e");
  CHECK(md5_hex("a") == "0cc175b9c0f1b6a831c399e269772661");
  CHECK(md5_hex("abc") == "900150983cd24fb0d6963f7d28e17f72");
  CHECK(md5_hex("message digest") == "f96b697d7cb7938d525a2f31aaf161d0");
  CHECK(md5_hex("abcdefghijklmnopqrstuvwxyz") == "c3fcd3d76192e4007dfb496cca67e13b");
  CHECK(md5_hex("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") ==
        "d174ab98d277d9f5a5611c2c9f419d9f");
  std::string digits;
  for (int i = 0; i < 8; ++i) digits += "1234567890";
  CHECK(md5_hex(digits) == "57edf4a22be3c955ac49da2e2107b67a");
  // Any split into update() calls gives the one-shot digest (lengths across 55/56/64 bytes).
  std::string text;
  for (int i = 0; i < 300; ++i) text += static_cast<char>(i * 37 + 11);
  for (size_t cut : {0, 1, 55, 56, 63, 64, 65, 128, 299}) {
    Md5 m;
    m.update(text.data(), cut);
    m.update(text.data() + cut, text.size() - cut);
    CHECK(m.hex() == md5_hex(text));
  }
  fs::path d = scratch_dir("md5");
  write_text_atomic((d / "f").string(), text);
  CHECK(md5_file((d / "f").string()) == md5_hex(text));
  CHECK_THROWS_WITH_AS(md5_file((d / "missing").string()), doctest::Contains("cannot open"), Error);
  fs::remove_all(d);
}

TEST_CASE("DataInfo: round trip, clone, checkpoint, compaction; older files load; bad metadata refused") {
  Model m = small_model(3);
  m.data_info = sample_info();
  Model back = Model::from_archive(m.to_archive(), "mem");
  check_same_info(back.data_info, m.data_info);
  check_same_info(m.clone().data_info, m.data_info);

  // Through a file.
  fs::path d = scratch_dir("info");
  const std::string path = (d / "m.dnns").string();
  m.save(path);
  check_same_info(Model::load(path).data_info, m.data_info);

  // A checkpoint restored into a model keeps it, also from a checkpoint that lacks it.
  {
    TrainConfig cfg;
    Model target = small_model(4);
    target.data_info = sample_info();
    Trainer t(target, cfg);
    Archive ck = t.checkpoint();
    CHECK(ck.meta.count("data.classes") == 1);
    for (auto it = ck.meta.begin(); it != ck.meta.end();)
      it = it->first.rfind("data.", 0) == 0 ? ck.meta.erase(it) : std::next(it);
    t.restore(ck, "old checkpoint");
    check_same_info(t.model().data_info, sample_info());
  }

  // Compaction carries it: a compact model still has its class names.
  {
    Model masked = m.clone();
    Rng rng(5);
    testing::random_masks(masked, rng, 0.3f, 0.5f);
    Model c = compact_model(masked);
    check_same_info(c.data_info, m.data_info);
    c.save((d / "c.dnns").string());
    check_same_info(Model::load((d / "c.dnns").string()).data_info, m.data_info);
  }

  // Exports carry it: ONNX metadata_props, and arrays in the C header.
  {
    std::string onnx = onnx_model_bytes(m);
    CHECK(testing::contains(onnx, "dnnshifter.class_names"));
    CHECK(testing::contains(onnx, "[\"plane\",\"car\",\"bird with, comma\","));
    CHECK(testing::contains(onnx, "dnnshifter.normalize_std"));
    CHECK(testing::contains(onnx, "/data/my set"));
    export_c(m, (d / "c").string(), "net");
    std::string h = read_text((d / "c" / "net.h").string());
    CHECK(testing::contains(h, "static const char* const net_class_names[10] = {"));
    CHECK(testing::contains(h, "\"bird with, comma\","));
    CHECK(testing::contains(h, "static const float net_input_mean[3] = {"));
  }

  // An older file: no data.* entries. It loads, with empty info; to_archive writes no keys.
  Archive old = m.to_archive();
  for (auto it = old.meta.begin(); it != old.meta.end();)
    it = it->first.rfind("data.", 0) == 0 ? old.meta.erase(it) : std::next(it);
  Model o = Model::from_archive(old, "old.dnns");
  CHECK(o.data_info.empty());
  CHECK(o.to_archive().meta.count("data.classes") == 0);
  CHECK(o.to_archive().meta.count("data.mean") == 0);

  // Metadata that disagrees with the graph is refused, naming the file and the key.
  auto refused = [&](const std::string& key, const std::string& value, const std::string& words) {
    Archive a = m.to_archive();
    a.meta[key] = value;
    CHECK_THROWS_WITH_AS(Model::from_archive(a, "bad.dnns"), doctest::Contains(words.c_str()), Error);
  };
  refused("data.classes", "a\nb\nc", "bad.dnns: meta 'data.classes' names 3 classes, the model has 10");
  refused("data.channels", "L", "does not fit an input of 3 channels");
  refused("data.mean", "0.5,0.5", "one value per input channel");
  refused("data.std", "0.2,nan,0.2", "'nan' is not a finite number");
  refused("data.std", "0.2,-0.1,0.2", "negative");
  refused("data.mean", "0.5,x,0.5", "'x' is not a finite number");
  fs::remove_all(d);
}

TEST_CASE("heat map SVG: one cell per value, shades, refusals") {
  HeatMap h;
  h.title = "t <&>";
  h.row_labels = h.col_labels = {"a", "b", "c"};
  h.shade = {1, 0, 0, 0.5, 0.5, 0, 0, 0, 1};
  h.text = {"9", "0", "0", "4", "4", "0", "0", "0", "7"};
  std::string svg = render_heatmap_svg(h);
  size_t cells = 0;
  for (size_t p = svg.find("class=\"cell\""); p != std::string::npos; p = svg.find("class=\"cell\"", p + 1)) ++cells;
  CHECK(cells == 9);
  CHECK(testing::contains(svg, "fill=\"#08306b\""));  // shade 1
  CHECK(testing::contains(svg, "t &lt;&amp;&gt;"));
  CHECK(testing::contains(svg, ">9</text>"));
  h.shade[4] = 1.5;
  CHECK_THROWS_WITH_AS(render_heatmap_svg(h), doctest::Contains("outside [0, 1]"), Error);
  h.shade[4] = NAN;
  CHECK_THROWS_AS(render_heatmap_svg(h), Error);
  h.shade.pop_back();
  CHECK_THROWS_WITH_AS(render_heatmap_svg(h), doctest::Contains("8 shades for 3 x 3 cells"), Error);
}

TEST_CASE("cifar_prune eval and predict: the numbers of the trainer, of a compact model, of the forward pass") {
  REQUIRE(fs::exists(kBin));
  fs::path d = scratch_dir("app");
  const std::string run_dir = (d / "run").string();
  Run tr = run({kBin, "train", "--data", "synthetic", "--model", "resnet20", "--epochs", "1", "--batch-size", "64",
                "--train-subset", "256", "--test-subset", "160", "--lr", "0.05", "--threads", "2", "--out", run_dir},
               d);
  REQUIRE_MESSAGE(tr.status == 0, tr.err);
  const std::string model_path = run_dir + "/model.dnns";
  JsonValue metrics = parse_json(read_text(run_dir + "/metrics.json"), "metrics.json");
  Model model = Model::load(model_path);

  // What training recorded: the data set, its classes and the normalisation it trained with.
  {
    CHECK(model.data_info.dataset == "synthetic");
    CHECK(model.data_info.channel_order == "RGB");
    REQUIRE(model.data_info.class_names.size() == 10);
    CHECK(model.data_info.class_names[3] == "class3");
    Dataset train = load_dataset("synthetic", true).sample(256, 1);  // as load_data draws --train-subset
    ChannelStats s = channel_stats(train);
    CHECK(model.data_info.mean == s.mean);
    CHECK(model.data_info.std == s.std);
  }

  // eval on the same test subset: the trainer's accuracy and loss, exactly.
  const std::string ev_dir = (d / "ev").string();
  Run ev = run({kBin, "eval", model_path, "--subset", "160", "--threads", "2", "--json", "--out", ev_dir}, d);
  REQUIRE_MESSAGE(ev.status == 0, ev.err);
  JsonValue j = parse_json(ev.out, "eval stdout");
  CHECK(json_double(json_field(j, "accuracy", ""), "") == json_double(json_field(metrics, "test_accuracy", ""), ""));
  CHECK(json_double(json_field(j, "loss", ""), "") == json_double(json_field(metrics, "test_loss", ""), ""));
  CHECK(json_int(json_field(j, "examples", ""), "") == 160);
  CHECK(json_double(json_field(j, "images_per_sec", ""), "") > 0);
  CHECK(json_string(json_field(j, "normalization", ""), "") == "recorded in the model file");
  // The confusion matrix adds up: total = examples, row sums = per-class counts, diagonal =
  // per-class correct, trace = correct.
  {
    const auto& cm = json_array(json_field(j, "confusion", ""), "");
    const auto& pc = json_array(json_field(j, "per_class_correct", ""), "");
    const auto& pn = json_array(json_field(j, "per_class_examples", ""), "");
    const auto& pa = json_array(json_field(j, "per_class_accuracy", ""), "");
    REQUIRE(cm.size() == 10);
    int64_t total = 0, trace = 0;
    for (size_t t = 0; t < 10; ++t) {
      int64_t row = 0;
      for (const JsonValue& v : json_array(cm[t], "")) row += json_int(v, "");
      total += row;
      trace += json_int(cm[t].items[t], "");
      CHECK(json_int(pc[t], "") == json_int(cm[t].items[t], ""));
      CHECK(json_int(pn[t], "") == row);
      CHECK(json_double(pa[t], "") == doctest::Approx(row ? double(json_int(pc[t], "")) / row : 0.0));
    }
    CHECK(total == 160);
    CHECK(trace == json_int(json_field(j, "correct", ""), ""));
    CHECK(double(trace) / 160 == json_double(json_field(j, "accuracy", ""), ""));
    // Synthetic labels cycle 0..9, so a subset of 160 has every class: no row is empty.
    for (size_t t = 0; t < 10; ++t) CHECK(json_int(pn[t], "") > 0);
  }
  // --out: the same JSON, a Markdown table and a heat map of 10 x 10 cells.
  CHECK(read_text(ev_dir + "/eval.json") == ev.out);
  std::string md = read_text(ev_dir + "/confusion.md");
  CHECK(testing::contains(md, "| true \\ predicted | class0 |"));
  CHECK(testing::contains(md, "| **class9** |"));
  std::string svg = read_text(ev_dir + "/confusion.svg");
  size_t cells = 0;
  for (size_t p = svg.find("class=\"cell\""); p != std::string::npos; p = svg.find("class=\"cell\"", p + 1)) ++cells;
  CHECK(cells == 100);

  // A compact model of a pruned copy: eval equals an evaluation made here, with the model's
  // recorded normalisation, on the same test subset; its class names survive compaction.
  {
    Model masked = model.clone();
    Rng rng(9);
    testing::random_masks(masked, rng, 0.4f, 0.6f);
    Model compact = compact_model(masked);
    const std::string cpath = (d / "compact.dnns").string();
    compact.save(cpath);
    LoaderOptions lo;
    lo.batch_size = 50, lo.shuffle = false, lo.augment = false;
    lo.normalize.mean = model.data_info.mean, lo.normalize.std = model.data_info.std;
    Loader test(load_dataset("synthetic", false).sample(160, 2), lo);
    std::vector<int64_t> cm;
    EvalStats here = evaluate(masked, test, 0.0f, &cm);
    Run ec = run({kBin, "eval", cpath, "--data", "synthetic", "--subset", "160", "--threads", "2", "--json"}, d);
    REQUIRE_MESSAGE(ec.status == 0, ec.err);
    JsonValue jc = parse_json(ec.out, "eval stdout (compact)");
    CHECK(json_int(json_field(jc, "correct", ""), "") == here.correct);
    CHECK(json_double(json_field(jc, "loss", ""), "") == doctest::Approx(here.loss).epsilon(1e-5));
    const auto& cmc = json_array(json_field(jc, "confusion", ""), "");
    for (size_t t = 0; t < 10; ++t)
      for (size_t p = 0; p < 10; ++p) CHECK(json_int(cmc[t].items[p], "") == cm[t * 10 + p]);
    CHECK(json_string(json_field(jc, "classes", "").items[7], "") == "class7");
  }

  // predict: a PNG of the input size, and one twice as large (resized as the image-folder
  // reader resizes). Expected probabilities from the model's forward on the pixels normalised
  // here, with the formula, not through the loader.
  auto expected_probs = [&](const std::vector<uint8_t>& chw, const std::vector<float>& mean,
                            const std::vector<float>& sd) {
    Tensor x({1, 3, 32, 32});
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) x[c * 1024 + p] = (chw[c * 1024 + p] / 255.0f - mean[c]) / sd[c];
    Tensor logits = model.forward(x, false);
    std::vector<double> pr(10);
    double mx = logits[0], sum = 0;
    for (int k = 1; k < 10; ++k) mx = std::max(mx, double(logits[k]));
    for (int k = 0; k < 10; ++k) sum += pr[k] = std::exp(double(logits[k]) - mx);
    for (double& v : pr) v /= sum;
    return pr;
  };
  Rng rng(17);
  auto write_png = [&](const std::string& path, int h, int w) {
    std::vector<uint8_t> hwc(size_t(h) * w * 3);  // (h, w, 3)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c)  // a smooth pattern with noise, so resizing matters
          hwc[(size_t(y) * w + x) * 3 + c] =
              static_cast<uint8_t>(std::clamp(128 + 100 * std::sin(0.2 * x + c) * std::cos(0.15 * y) + 20 * rng.normal(), 0.0, 255.0));
    REQUIRE(stbi_write_png(path.c_str(), w, h, 3, hwc.data(), w * 3) != 0);
    std::vector<uint8_t> chw(size_t(h) * w * 3);  // (3, h, w)
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < h * w; ++p) chw[size_t(c) * h * w + p] = hwc[size_t(p) * 3 + c];
    return chw;
  };
  const std::string small = (d / "small.png").string(), big = (d / "big.png").string();
  std::vector<uint8_t> small_chw = write_png(small, 32, 32);
  std::vector<uint8_t> big_chw = write_png(big, 48, 64);  // 48 high, 64 wide
  std::vector<uint8_t> big_resized(3 * 32 * 32);
  resize_image(big_chw.data(), 3, 48, 64, big_resized.data(), 32, 32);

  Run pr = run({kBin, "predict", model_path, small, big, "--top", "3", "--json", "--threads", "2"}, d);
  REQUIRE_MESSAGE(pr.status == 0, pr.err);
  JsonValue jp = parse_json(pr.out, "predict stdout");
  CHECK(json_array(json_field(jp, "assumed", ""), "").empty());
  const auto& preds = json_array(json_field(jp, "predictions", ""), "");
  REQUIRE(preds.size() == 2);
  for (int i = 0; i < 2; ++i) {
    std::vector<double> want = expected_probs(i == 0 ? small_chw : big_resized, model.data_info.mean, model.data_info.std);
    const auto& got = json_array(json_field(preds[i], "probabilities", ""), "");
    REQUIRE(got.size() == 10);
    for (int k = 0; k < 10; ++k) CHECK(json_double(got[k], "") == doctest::Approx(want[k]).epsilon(1e-6));
    const auto& top = json_array(json_field(preds[i], "top", ""), "");
    REQUIRE(top.size() == 3);
    int best = static_cast<int>(std::max_element(want.begin(), want.end()) - want.begin());
    CHECK(json_int(json_field(top[0], "class", ""), "") == best);
    CHECK(json_string(json_field(top[0], "name", ""), "") == "class" + std::to_string(best));
    CHECK(json_double(json_field(top[0], "probability", ""), "") >= json_double(json_field(top[1], "probability", ""), ""));
    CHECK(json_double(json_field(top[1], "probability", ""), "") >= json_double(json_field(top[2], "probability", ""), ""));
  }
  CHECK(json_int(json_field(preds[1], "width", ""), "") == 64);
  CHECK(json_int(json_field(preds[1], "height", ""), "") == 48);

  // An older model file (no data.*): predict assumes CIFAR-10's statistics and says so; eval
  // takes the statistics of --data's training split and says so.
  {
    Archive a = model.to_archive();
    for (auto it = a.meta.begin(); it != a.meta.end();)
      it = it->first.rfind("data.", 0) == 0 ? a.meta.erase(it) : std::next(it);
    const std::string opath = (d / "old.dnns").string();
    save_archive(opath, a);
    Run po = run({kBin, "predict", opath, small, "--json", "--threads", "2"}, d);
    REQUIRE_MESSAGE(po.status == 0, po.err);
    CHECK(testing::contains(po.err, "CIFAR-10"));
    JsonValue jo = parse_json(po.out, "predict stdout (old)");
    CHECK(json_array(json_field(jo, "assumed", ""), "").size() == 2);
    ChannelStats c10 = cifar10_stats();
    std::vector<double> want = expected_probs(small_chw, c10.mean, c10.std);
    const auto& got = json_array(json_field(json_field(jo, "predictions", "").items[0], "probabilities", ""), "");
    for (int k = 0; k < 10; ++k) CHECK(json_double(got[k], "") == doctest::Approx(want[k]).epsilon(1e-6));
    const JsonValue& top0 = json_field(json_field(jo, "predictions", "").items[0], "top", "").items[0];
    CHECK(json_string(json_field(top0, "name", ""), "") == std::to_string(json_int(json_field(top0, "class", ""), "")));

    // --data: eval's fallback, the statistics of that data set's training split.
    Run pd = run({kBin, "predict", opath, small, "--json", "--data", "synthetic", "--threads", "2"}, d);
    REQUIRE_MESSAGE(pd.status == 0, pd.err);
    CHECK(testing::contains(pd.err, "synthetic's training split"));
    const ChannelStats syn = channel_stats(load_dataset("synthetic", true));
    CHECK(syn.mean != c10.mean);  // else the comparison below could not tell the two apart
    std::vector<double> want_d = expected_probs(small_chw, syn.mean, syn.std);
    const JsonValue jd = parse_json(pd.out, "predict stdout (--data)");
    const auto& got_d = json_array(json_field(json_field(jd, "predictions", "").items[0], "probabilities", ""), "");
    for (int k = 0; k < 10; ++k) CHECK(json_double(got_d[k], "") == doctest::Approx(want_d[k]).epsilon(1e-6));
    // --threads is checked as by every other command (setup_system).
    Run pt = run({kBin, "predict", opath, small, "--threads", "5000"}, d);
    CHECK(pt.status == 1);
    CHECK(testing::contains(pt.err, "--threads must be between 0 and 1024, got 5000"));

    // --mean/--std: the normalisation given on the command line.
    Run pm = run({kBin, "predict", opath, small, "--json", "--mean", "0.5,0.25,0.125", "--std", "0.3,0.2,0.1"}, d);
    REQUIRE_MESSAGE(pm.status == 0, pm.err);
    std::vector<double> want_m = expected_probs(small_chw, {0.5f, 0.25f, 0.125f}, {0.3f, 0.2f, 0.1f});
    JsonValue jm = parse_json(pm.out, "predict stdout (--mean/--std)");
    CHECK(json_array(json_field(jm, "assumed", ""), "").size() == 1);  // only the class names
    const auto& got_m = json_array(json_field(json_field(jm, "predictions", "").items[0], "probabilities", ""), "");
    for (int k = 0; k < 10; ++k) CHECK(json_double(got_m[k], "") == doctest::Approx(want_m[k]).epsilon(1e-6));
    Run bad_m = run({kBin, "predict", opath, small, "--mean", "0.5,0.5", "--std", "0.3,0.2,0.1"}, d);
    CHECK(bad_m.status == 1);
    CHECK(testing::contains(bad_m.err, "--mean needs 3 values (one per input channel), got 2"));
    Run eo = run({kBin, "eval", opath, "--threads", "2", "--json"}, d);
    CHECK(eo.status == 1);
    CHECK(testing::contains(eo.err, "records no data set; give --data"));
    eo = run({kBin, "eval", opath, "--data", "synthetic", "--subset", "64", "--threads", "2", "--json"}, d);
    REQUIRE_MESSAGE(eo.status == 0, eo.err);
    CHECK(testing::contains(eo.err, "holds no input normalisation"));
    CHECK(testing::contains(json_string(json_field(parse_json(eo.out, "eval"), "normalization", ""), ""), "assumed"));
  }

  // Bad input: clear errors, exit status 1 (2 for a bad command line is the parser's).
  Run bad = run({kBin, "predict", model_path, (d / "nothere.png").string()}, d);
  CHECK(bad.status == 1);
  CHECK(testing::contains(bad.err, "nothere.png: cannot open"));
  bad = run({kBin, "predict", model_path, small, "--top", "0"}, d);
  CHECK(bad.status == 1);
  CHECK(testing::contains(bad.err, "--top must be positive"));
  bad = run({kBin, "eval", model_path, "--data", "fashion-mnist", "--subset", "10"}, d);
  if (fs::exists(kFashionMnistDir)) {
    CHECK(bad.status == 1);
    CHECK(testing::contains(bad.err, "images are 1x28x28, the model"));
  }
  bad = run({kBin, "eval", model_path, "--split", "val"}, d);
  CHECK(bad.status == 1);
  CHECK(testing::contains(bad.err, "--split must be test or train"));
  fs::remove_all(d);
}

// ---------------------------------------------------------------- data fetch

namespace {

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(s >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(s);
  return ntohs(a.sin_port);
}

bool port_open(int port) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

// `python3 -m http.server` serving `dir` on 127.0.0.1; stopped by the destructor.
struct HttpServer {
  pid_t pid = -1;
  int port = 0;
  explicit HttpServer(const fs::path& dir) {
    port = free_port();
    std::string p = std::to_string(port), root = dir.string(), log = (dir.parent_path() / "http.log").string();
    std::vector<std::string> args = {"python3", "-m", "http.server", p, "--bind", "127.0.0.1", "--directory", root};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (posix_spawnp(&pid, "python3", &fa, nullptr, argv.data(), environ) != 0) pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 200 && pid > 0 && !port_open(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  bool up() const { return pid > 0 && port_open(port); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  ~HttpServer() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      int st;
      waitpid(pid, &st, 0);
    }
  }
};

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

// n CIFAR-10 records: a label byte and 3072 pixel bytes.
std::string cifar_records(int n, int seed) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    s += static_cast<char>((i + seed) % 10);
    for (int k = 0; k < 3072; ++k) s += static_cast<char>((k * 7 + i * 13 + seed) & 0xff);
  }
  return s;
}

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

bool nothing_partial(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return true;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind(".fetch-", 0) == 0) return false;
  return true;
}

}  // namespace

TEST_CASE("data fetch: a local server; checksums, a missing file, the server down, a wrong layout") {
  Run probe = run({"sh", "-c", "command -v curl && command -v tar && command -v gzip && command -v python3"},
                  fs::temp_directory_path());
  if (probe.status != 0) {
    std::fprintf(stderr, "skipped: data fetch needs curl, tar, gzip and python3 (scripts/setup.sh installs them)\n");
    std::exit(77);
  }
  fs::path d = scratch_dir("fetch");
  fs::path srv = d / "srv", stage = d / "stage";
  // CIFAR-10: five train batches of 4 records, a test batch of 6, in the official layout.
  fs::create_directories(stage / "cifar-10-batches-bin");
  for (int b = 1; b <= 5; ++b)
    write_bytes(stage / "cifar-10-batches-bin" / ("data_batch_" + std::to_string(b) + ".bin"), cifar_records(4, b));
  write_bytes(stage / "cifar-10-batches-bin" / "test_batch.bin", cifar_records(6, 0));
  fs::create_directories(srv);
  REQUIRE(run({"tar", "-czf", (srv / "cifar-10-binary.tar.gz").string(), "-C", stage.string(), "cifar-10-batches-bin"}, d)
              .status == 0);
  // CIFAR-100 with the wrong layout: train.bin but no test.bin.
  fs::create_directories(stage / "cifar-100-binary");
  write_bytes(stage / "cifar-100-binary" / "train.bin", std::string(2 + 3072, '\x01'));
  REQUIRE(run({"tar", "-czf", (srv / "cifar-100-binary.tar.gz").string(), "-C", stage.string(), "cifar-100-binary"}, d)
              .status == 0);
  // Fashion-MNIST: four gzip'd IDX files, 3 train and 2 test images of 28x28.
  for (auto [split, n] : {std::pair<std::string, int>{"train", 3}, {"t10k", 2}}) {
    std::string images = be32(0x803) + be32(n) + be32(28) + be32(28) + std::string(size_t(n) * 784, '\x40');
    std::string labels = be32(0x801) + be32(n);
    for (int i = 0; i < n; ++i) labels += static_cast<char>(i * 3 % 10);
    write_bytes(srv / (split + "-images-idx3-ubyte"), images);
    write_bytes(srv / (split + "-labels-idx1-ubyte"), labels);
  }
  REQUIRE(run({"sh", "-c", "cd '" + srv.string() + "' && gzip -n *-ubyte"}, d).status == 0);
  auto md5_of = [&](const std::string& f) { return md5_file((srv / f).string()); };

  HttpServer server(srv);
  REQUIRE_MESSAGE(server.up(), "python3 -m http.server did not start");
  const fs::path out = d / "data";

  SUBCASE("good archives, the expected checksums given: unpacked where --data finds them") {
    FetchOptions o;
    o.dir = out.string(), o.url_base = server.url(), o.verbose = false;
    o.md5["cifar-10-binary.tar.gz"] = md5_of("cifar-10-binary.tar.gz");
    std::string got = fetch_dataset("cifar10", o);
    CHECK(got == (out / "cifar-10-batches-bin").string());
    Dataset train = load_dataset(out.string(), true), test = load_dataset(out.string(), false);
    CHECK(train.size() == 20);
    CHECK(test.size() == 6);
    CHECK(test.class_names == cifar10_class_names());
    CHECK(nothing_partial(out));
    // Present now: fetched again, nothing is downloaded (the server may be gone).
    FetchOptions o2 = o;
    o2.url_base = "http://127.0.0.1:1";
    CHECK(fetch_dataset("cifar10", o2) == got);

    FetchOptions f;
    f.dir = out.string(), f.url_base = server.url() + "/", f.verbose = false;
    for (const FetchFile& file : fetch_source("fashion-mnist").files) f.md5[file.name] = md5_of(file.name);
    std::string fm = fetch_dataset("fashion-mnist", f);
    Dataset ftrain = load_dataset(fm, true), ftest = load_dataset(fm, false);
    CHECK(ftrain.size() == 3);
    CHECK(ftest.size() == 2);
    CHECK(ftest.labels[1] == 3);

    // The program: exit 0 and the --data to use.
    Run r = run({kBin, "data", "fetch", "cifar10", "--dir", (d / "data2").string(), "--url-base", server.url(), "--md5",
                 "cifar-10-binary.tar.gz=" + md5_of("cifar-10-binary.tar.gz")},
                d);
    CHECK_MESSAGE(r.status == 0, r.err);
    CHECK(testing::contains(r.out, "use --data " + (d / "data2" / "cifar-10-batches-bin").string()));
  }
  SUBCASE("the published checksum does not match: refused, nothing kept") {
    FetchOptions o;
    o.dir = out.string(), o.url_base = server.url(), o.verbose = false;
    CHECK_THROWS_WITH_AS(fetch_dataset("cifar10", o),
                         doctest::Contains("differs from the published c32a1d4ab5d03f1284b67883e8d87530"), Error);
    CHECK_FALSE(fs::exists(out / "cifar-10-batches-bin"));
    CHECK(nothing_partial(out));
    Run r = run({kBin, "data", "fetch", "fashion-mnist", "--dir", out.string(), "--url-base", server.url()}, d);
    CHECK(r.status == 1);
    CHECK(testing::contains(r.err, "train-images-idx3-ubyte.gz: MD5 "));
    CHECK(testing::contains(r.err, "nothing was kept"));
    CHECK_FALSE(fs::exists(out / "fashion-mnist"));
    CHECK(nothing_partial(out));
    // A malformed --md5 value is refused before anything is downloaded.
    o.md5["cifar-10-binary.tar.gz"] = "xyz";
    CHECK_THROWS_WITH_AS(fetch_dataset("cifar10", o), doctest::Contains("32 lowercase hex digits"), Error);
  }
  SUBCASE("a file the server lacks, the server down, a wrong layout, an unknown name") {
    FetchOptions o;
    o.dir = out.string(), o.url_base = server.url() + "/nowhere", o.verbose = false;
    CHECK_THROWS_WITH_AS(fetch_dataset("cifar10", o), doctest::Contains("404"), Error);
    CHECK(nothing_partial(out));
    o.url_base = "http://127.0.0.1:" + std::to_string(free_port());  // nothing listens there
    CHECK_THROWS_WITH_AS(fetch_dataset("cifar10", o), doctest::Contains("no network? the server down?"), Error);
    CHECK(nothing_partial(out));
    Run r = run({kBin, "data", "fetch", "cifar100", "--dir", out.string(), "--url-base", o.url_base}, d);
    CHECK(r.status == 1);
    CHECK(testing::contains(r.err, "cannot download " + o.url_base + "/cifar-100-binary.tar.gz"));
    o.url_base = server.url();
    o.md5["cifar-100-binary.tar.gz"] = md5_of("cifar-100-binary.tar.gz");
    CHECK_THROWS_WITH_AS(fetch_dataset("cifar100", o), doctest::Contains("does not hold cifar-100-binary/test.bin"),
                         Error);
    CHECK_FALSE(fs::exists(out / "cifar-100-binary"));
    CHECK(nothing_partial(out));
    CHECK_THROWS_WITH_AS(fetch_dataset("mnist", o), doctest::Contains("known: cifar10, cifar100, fashion-mnist"), Error);
    // The temporary folder of a fetch killed midway (its process gone) is removed by the next
    // fetch; one of a live process (this one's parent) is left alone.
    fs::create_directories(out / ".fetch-cifar10.999999999" / "unpacked");
    fs::create_directories(out / (".fetch-cifar10." + std::to_string(::getppid())));
    o.md5 = {{"cifar-10-binary.tar.gz", md5_of("cifar-10-binary.tar.gz")}};
    fetch_dataset("cifar10", o);
    CHECK_FALSE(fs::exists(out / ".fetch-cifar10.999999999"));
    CHECK(fs::exists(out / (".fetch-cifar10." + std::to_string(::getppid()))));
  }
  fs::remove_all(d);
}
