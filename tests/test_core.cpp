// core/: tensors (shapes, views, copies), the host block cache, errors, the RNG, JSON.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <cmath>
#include <functional>

#include "core/cli.h"
#include "core/error.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace dnns;
using namespace dnns::testing;

TEST_CASE("tensors: shape, zero fill, views share storage, clones do not") {
  Tensor t({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.dim(-1) == 4);
  for (int64_t i = 0; i < t.numel(); ++i) CHECK(t[i] == 0.0f);
  CHECK(reinterpret_cast<uintptr_t>(t.data()) % 64 == 0);
  Tensor v = t.reshape({6, 4});
  v[5] = 7.0f;
  CHECK(t[5] == 7.0f);
  Tensor c = t.clone();
  c[5] = 1.0f;
  CHECK(t[5] == 7.0f);
  CHECK_THROWS_WITH_AS(t.reshape({5, 5}), doctest::Contains("cannot view (2, 3, 4) as (5, 5)"), Error);
  CHECK_THROWS_WITH_AS(Tensor::from({2}, {1, 2, 3}), doctest::Contains("3 values for shape (2)"), Error);
  CHECK_THROWS_WITH_AS(check_shape({1, 2}, {1, 3}, "layer x"), doctest::Contains("layer x: expected shape (1, 3), got (1, 2)"),
                       Error);
}

TEST_CASE("host block cache: freed blocks are reused, zero-filled when asked, and released") {
  release_host_cache();
  CHECK(host_cache_bytes() == 0);
  const float* first;
  {
    Tensor a = Tensor::full({1000, 100}, 3.0f);
    first = a.data();
  }
  CHECK(host_cache_bytes() >= 1000 * 100 * sizeof(float));
  Tensor b({1000, 100});  // same size: the cached block, zero-filled again
  CHECK(b.data() == first);
  for (int64_t i = 0; i < b.numel(); i += 997) CHECK(b[i] == 0.0f);
  CHECK(host_cache_bytes() == 0);
  { Tensor c = Tensor::uninit({10, 10}); }
  CHECK(host_cache_bytes() > 0);
  release_host_cache();
  CHECK(host_cache_bytes() == 0);
}

TEST_CASE("rng: same seed, same stream; saved state resumes the stream") {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) CHECK(a.next_u64() == b.next_u64());
  CHECK(a.next_u64() != c.next_u64());
  Rng::State s = a.state();
  uint64_t x = a.next_u64();
  Rng d;
  d.set_state(s);
  CHECK(d.next_u64() == x);
  int counts[5] = {0};
  for (int i = 0; i < 50000; ++i) ++counts[a.below(5)];
  for (int k = 0; k < 5; ++k) CHECK(std::abs(counts[k] - 10000) < 500);
  double sum = 0, sq = 0;
  for (int i = 0; i < 50000; ++i) {
    double z = a.normal();
    sum += z, sq += z * z;
  }
  CHECK(std::abs(sum / 50000) < 0.02);
  CHECK(std::abs(sq / 50000 - 1.0) < 0.03);
}

TEST_CASE("JSON: the reader parses what the manifest needs and refuses malformed text") {
  JsonValue v = parse_json(R"( {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}} )", "t");
  REQUIRE(v.type == JsonValue::Type::Object);
  const auto& a = json_array(json_field(v, "a", "t"), "t.a");
  REQUIRE(a.size() == 5);
  CHECK(json_int(a[0], "a0") == 1);
  CHECK(json_double(a[1], "a1") == -2500.0);
  CHECK(json_bool(a[2], "a2"));
  CHECK(a[4].type == JsonValue::Type::Null);
  CHECK(json_string(json_field(v, "s", "t"), "s") == "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(json_field(v, "o", "t").members.empty());
  CHECK(json_int(parse_json("9007199254740993", "t"), "big") == 9007199254740993LL);  // exact beyond 2^53

  CHECK(contains(error_of([] { parse_json("{\"a\": 1,\n \"b\": }", "m.json"); }), "m.json: line 2, column 7"));
  CHECK(contains(error_of([] { parse_json("{\"a\": 1, \"a\": 2}", "m"); }), "duplicate key \"a\""));
  CHECK(contains(error_of([] { parse_json("[1, 2,]", "m"); }), "unexpected character ']'"));
  CHECK(contains(error_of([] { parse_json("[01]", "m"); }), "leading zeros"));
  CHECK(contains(error_of([] { parse_json("{\"a\": 1} x", "m"); }), "unexpected text after"));
  CHECK(contains(error_of([] { parse_json("\"abc", "m"); }), "unterminated string"));
  CHECK(contains(error_of([] { parse_json("NaN", "m"); }), "unexpected character 'N'"));
  CHECK(contains(error_of([] { parse_json(std::string(300, '['), "m"); }), "nesting deeper"));
  CHECK(contains(error_of([] { json_int(parse_json("1.5", "m"), "m: x"); }), "m: x: expected an integer"));
  CHECK(contains(error_of([] { json_field(parse_json("{}", "m"), "params", "m: v"); }), "m: v: missing field 'params'"));
  CHECK(contains(error_of([] { json_string(parse_json("3", "m"), "m: f"); }), "expected a string, got number '3'"));
}

TEST_CASE("JSON: what the writer writes, the reader reads back") {
  const std::string odd = std::string("q\"b\\s\n\t\r") + '\x01' + "\xc3\xa9";
  const std::string text = Json()
                               .add("name", odd)
                               .add("third", 1.0 / 3.0)
                               .add("big", int64_t{-9007199254740993LL})
                               .add("yes", true)
                               .add("nan", std::nan(""))
                               .add("xs", std::vector<double>{0.1, -2e-300, 5})
                               .add_raw("raw", Json().add("k", 1).str())
                               .str();
  JsonValue v = parse_json(text, "round trip");
  CHECK(json_string(json_field(v, "name", "r"), "r") == odd);
  CHECK(json_double(json_field(v, "third", "r"), "r") == 1.0 / 3.0);  // shortest form, exact
  CHECK(json_int(json_field(v, "big", "r"), "r") == -9007199254740993LL);
  CHECK(json_bool(json_field(v, "yes", "r"), "r"));
  CHECK(json_field(v, "nan", "r").type == JsonValue::Type::Null);  // NaN is written as null
  const auto& xs = json_array(json_field(v, "xs", "r"), "r");
  REQUIRE(xs.size() == 3);
  CHECK(json_double(xs[1], "r") == -2e-300);
  CHECK(json_int(json_field(json_field(v, "raw", "r"), "k", "r"), "r") == 1);
  CHECK(v.members[0].key == "name");  // keys in insertion order
  const std::vector<std::string> strings = {odd, "", "b"};
  const JsonValue a = parse_json(json_strings(strings), "strings");
  REQUIRE(json_array(a, "strings").size() == 3);
  for (size_t i = 0; i < strings.size(); ++i) CHECK(json_string(a.items[i], "strings") == strings[i]);
  CHECK(json_strings({}) == "[]");
}

TEST_CASE("JSON: flat objects (run records, hparams.json) read into key -> text") {
  CHECK_THROWS_WITH_AS(parse_flat_json("{\"a\": [1, 2]}", "f"), doctest::Contains("nested"), Error);
  CHECK_THROWS_WITH_AS(parse_flat_json("{\"a\": 1", "f"), doctest::Contains("f: malformed JSON"), Error);
  CHECK_THROWS_WITH_AS(parse_flat_json("[1]", "f"), doctest::Contains("f: malformed JSON: expected an object"), Error);
  auto kv = parse_flat_json(" {\"s\": \"a\\\"b\\u00e9\", \"n\": -1.5e3, \"t\": true, \"z\": null} ", "f");
  CHECK(kv.at("s") == "a\"b\xC3\xA9");
  CHECK(kv.at("n") == "-1.5e3");
  CHECK(kv.at("t") == "true");
  CHECK(kv.at("z") == "null");
}

TEST_CASE("flags: set_default yields to the command line and reads switches as parse does") {
  Flags f("prog", "test");
  f.add("epochs", "10", "epochs");
  f.add("lr", "0.1", "learning rate");
  f.add_bool("nesterov", "switch");
  f.add_bool("augment", "switch");
  std::vector<std::string> args = {"prog", "--lr", "0.5", "--augment=false"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  REQUIRE(f.parse(static_cast<int>(argv.size()), argv.data()));
  f.set_default("epochs", "3");  // not given: the stored value wins
  f.set_default("lr", "0.9");    // given: the command line wins
  f.set_default("nesterov", "true");
  f.set_default("augment", "true");
  CHECK(f.integer("epochs") == 3);
  CHECK(f.number("lr") == 0.5);
  CHECK(f.flag("nesterov"));
  CHECK_FALSE(f.flag("augment"));
  f.set_default("nesterov", "0");
  CHECK_FALSE(f.flag("nesterov"));
  CHECK_THROWS_WITH_AS(f.set_default("nesterov", "yes"), doctest::Contains("--nesterov is a switch"), Error);
  CHECK_THROWS_WITH_AS(f.set_default("momentum", "0.9"), doctest::Contains("undeclared flag --momentum"), Error);
}

TEST_CASE("flags: a number flag refuses inf and nan by name") {
  Flags f("prog", "test");
  f.add("lr", "0.1", "learning rate");
  CHECK(f.number("lr") == 0.1);
  for (const char* bad : {"inf", "-inf", "nan", "infinity"}) {
    CAPTURE(bad);
    std::vector<std::string> args = {"prog", "--lr", bad};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    REQUIRE(f.parse(static_cast<int>(argv.size()), argv.data()));
    const std::string expected = std::string("--lr expects a finite number, got '") + bad + "'";
    CHECK_THROWS_WITH_AS(f.number("lr"), doctest::Contains(expected.c_str()), Error);
  }
}
