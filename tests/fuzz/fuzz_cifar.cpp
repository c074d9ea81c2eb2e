// libFuzzer target: the CIFAR-10 and CIFAR-100 binary readers (datasets/cifar.cpp). Byte 0
// picks the reader (0: CIFAR-10 test batch, 1: CIFAR-100 fine labels, 2: CIFAR-100 coarse
// labels), the rest is the batch file. Seeds: tests/fuzz/cifar/.
#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string dir = dnns::fuzz::scratch_dir();
  const int mode = data[0] % 3;
  const std::string file = dir + (mode == 0 ? "/test_batch.bin" : "/test.bin");
  dnns::fuzz::write_file(file, data + 1, size - 1);
  try {
    dnns::Dataset d = mode == 0 ? dnns::load_cifar10_binary(dir, false)
                                : dnns::load_cifar100_binary(dir, false, mode == 2);
    d.validate();
  } catch (const dnns::Error&) {
  }
  return 0;
}
