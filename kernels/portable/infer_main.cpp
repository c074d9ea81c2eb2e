// dnns_infer: runs a model file on raw images with the portable runtime.
//
//   dnns_infer MODEL INPUT.bin OUTPUT.bin [--batch N] [--expect LOGITS.bin [--tol T]]
//
// INPUT.bin holds float32 little-endian images (N, C, H, W) back to back, N taken from the file
// size; OUTPUT.bin receives the outputs (N, classes) in the same encoding. With --expect the
// outputs are compared with reference ones: the run fails when the largest difference exceeds
// T times the logit scale (the largest |reference|, at least 1).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dnns_runtime.h"

namespace {

const char* kUsage =
    "usage: dnns_infer MODEL INPUT.bin OUTPUT.bin [--batch N] [--expect LOGITS.bin [--tol T]]\n"
    "\n"
    "Runs MODEL (a model file saved by dnnshifter) on INPUT.bin, float32 little-endian images\n"
    "(N, C, H, W), and writes the outputs (N, classes) to OUTPUT.bin in the same encoding.\n"
    "  --batch N          images per run of the network (default 8); the arena is sized for it\n"
    "  --expect FILE      compare the outputs with FILE; exit 1 when they differ by more than\n"
    "  --tol T            T x max(1, max |expected|) (default 1e-4)\n";

// Reads a whole file of little-endian float32 values; *n: how many.
float* read_floats(const char* path, long* n) {
  std::FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "dnns_infer: %s: cannot open for reading\n", path);
    return nullptr;
  }
  long bytes = -1;
  if (std::fseek(f, 0, SEEK_END) == 0) bytes = std::ftell(f);
  if (bytes < 0 || bytes % 4 != 0 || std::fseek(f, 0, SEEK_SET) != 0) {
    std::fprintf(stderr, "dnns_infer: %s: size %ld is not a whole number of float32 values\n", path, bytes);
    std::fclose(f);
    return nullptr;
  }
  unsigned char* raw = static_cast<unsigned char*>(std::malloc(size_t(bytes) + 4));
  float* out = static_cast<float*>(std::malloc(size_t(bytes) + 4));
  bool ok = raw && out && std::fread(raw, 1, size_t(bytes), f) == size_t(bytes);
  std::fclose(f);
  if (ok)
    for (long i = 0; i < bytes / 4; ++i) {
      const unsigned char* p = raw + 4 * i;
      const uint32_t bits = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
      std::memcpy(out + i, &bits, 4);
    }
  std::free(raw);
  if (!ok) {
    std::fprintf(stderr, "dnns_infer: %s: read error\n", path);
    std::free(out);
    return nullptr;
  }
  *n = bytes / 4;
  return out;
}

bool write_floats(const char* path, const float* x, long n) {
  std::FILE* f = std::fopen(path, "wb");
  if (!f) {
    std::fprintf(stderr, "dnns_infer: %s: cannot open for writing\n", path);
    return false;
  }
  bool ok = true;
  for (long i = 0; i < n && ok; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);
    const unsigned char b[4] = {(unsigned char)bits, (unsigned char)(bits >> 8), (unsigned char)(bits >> 16),
                                (unsigned char)(bits >> 24)};
    ok = std::fwrite(b, 1, 4, f) == 4;
  }
  ok = std::fclose(f) == 0 && ok;
  if (!ok) std::fprintf(stderr, "dnns_infer: %s: write error\n", path);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dnns::rt;
  const char* pos[3] = {nullptr, nullptr, nullptr};
  int npos = 0;
  long batch = 8;
  const char* expect = nullptr;
  double tol = 1e-4;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (!std::strcmp(a, "--help") || !std::strcmp(a, "-h")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if ((!std::strcmp(a, "--batch") || !std::strcmp(a, "--expect") || !std::strcmp(a, "--tol")) && i + 1 >= argc) {
      std::fprintf(stderr, "dnns_infer: %s needs a value\n", a);
      return 2;
    }
    char* end = nullptr;
    if (!std::strcmp(a, "--batch")) {
      batch = std::strtol(argv[++i], &end, 10);
      if (*end || batch < 1 || batch > 4096) {
        std::fprintf(stderr, "dnns_infer: --batch expects an integer in [1, 4096], got '%s'\n", argv[i]);
        return 2;
      }
    } else if (!std::strcmp(a, "--expect")) {
      expect = argv[++i];
    } else if (!std::strcmp(a, "--tol")) {
      tol = std::strtod(argv[++i], &end);
      if (*end || !(tol >= 0)) {
        std::fprintf(stderr, "dnns_infer: --tol expects a non-negative number, got '%s'\n", argv[i]);
        return 2;
      }
    } else if (a[0] == '-' && a[1] == '-') {
      std::fprintf(stderr, "dnns_infer: unknown option '%s'\n\n%s", a, kUsage);
      return 2;
    } else if (npos < 3) {
      pos[npos++] = a;
    } else {
      std::fprintf(stderr, "dnns_infer: unexpected argument '%s'\n\n%s", a, kUsage);
      return 2;
    }
  }
  if (npos != 3) {
    std::fputs(kUsage, stderr);
    return 2;
  }

  LoadedModel model;
  Status s = load_model_file(pos[0], &model);
  if (s != kOk) {
    std::fprintf(stderr, "dnns_infer: %s\n", model.error);
    return 1;
  }
  const Graph& g = model.graph;
  const long image = long(g.in_c) * g.in_h * g.in_w;
  long n_in = 0;
  float* input = read_floats(pos[1], &n_in);
  if (!input) return 1;
  if (n_in == 0 || n_in % image != 0) {
    std::fprintf(stderr, "dnns_infer: %s holds %ld floats, not a whole number of (%d, %d, %d) images\n", pos[1], n_in,
                 g.in_c, g.in_h, g.in_w);
    return 1;
  }
  const long n_images = n_in / image;
  if (batch > n_images) batch = n_images;

  // The only allocations: the plan and the arena, sized once for the batch.
  NodePlan* plan = static_cast<NodePlan*>(std::malloc(sizeof(NodePlan) * size_t(g.num_nodes)));
  int64_t per_image = 0;
  char err[256];
  if (!plan || plan_graph(g, plan, &per_image, err, sizeof err) != kOk) {
    std::fprintf(stderr, "dnns_infer: %s: %s\n", pos[0], plan ? err : "out of memory");
    return 1;
  }
  const int64_t arena_floats = per_image * batch;
  float* arena = static_cast<float*>(std::malloc(size_t(arena_floats > 0 ? arena_floats : 1) * sizeof(float)));
  Engine engine;
  if (!arena || engine_init(&engine, &g, plan, arena, arena_floats, int32_t(batch)) != kOk) {
    std::fprintf(stderr, "dnns_infer: %s\n", arena ? engine.error : "cannot allocate the arena");
    return 1;
  }
  const long classes = long(engine_output_size(&engine));
  float* output = static_cast<float*>(std::malloc(size_t(n_images * classes + 1) * sizeof(float)));
  if (!output) {
    std::fprintf(stderr, "dnns_infer: cannot allocate the outputs\n");
    return 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < n_images; i += batch) {
    const int32_t b = int32_t(n_images - i < batch ? n_images - i : batch);
    if (engine_run(&engine, input + i * image, b, output + i * classes) != kOk) {
      std::fprintf(stderr, "dnns_infer: %s\n", engine.error);
      return 1;
    }
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!write_floats(pos[2], output, n_images * classes)) return 1;
  std::printf("dnns_infer: %s: %d nodes, %lld weights; arena %.1f KiB for batch %ld\n", pos[0], g.num_nodes,
              (long long)model.num_weights, double(arena_floats) * 4 / 1024, batch);
  std::printf("dnns_infer: %ld image(s) -> (%ld, %ld) outputs in %.1f ms (%.2f ms/image), written to %s\n", n_images,
              n_images, classes, ms, ms / double(n_images), pos[2]);

  int status = 0;
  if (expect) {
    long n_ref = 0;
    float* ref = read_floats(expect, &n_ref);
    if (!ref) return 1;
    if (n_ref != n_images * classes) {
      std::fprintf(stderr, "dnns_infer: %s holds %ld values, the run produced %ld\n", expect, n_ref, n_images * classes);
      return 1;
    }
    double scale = 1.0, diff = 0.0;
    for (long i = 0; i < n_ref; ++i) {
      scale = std::fmax(scale, std::fabs(double(ref[i])));
      const double d = std::fabs(double(ref[i]) - double(output[i]));
      diff = std::isnan(d) ? INFINITY : std::fmax(diff, d);
    }
    const bool ok = diff <= tol * scale;
    std::printf("dnns_infer: max |output - expected| = %.3g at logit scale %.3g (relative %.3g, tolerance %.3g): %s\n",
                diff, scale, diff / scale, tol, ok ? "match" : "MISMATCH");
    status = ok ? 0 : 1;
    std::free(ref);
  }
  std::free(output);
  std::free(arena);
  std::free(plan);
  std::free(input);
  free_model(&model);
  return status;
}
