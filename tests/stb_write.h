// stb_image_write for the tests that write image files (test_datasets, test_eval_predict).
// Include it from one source file per test executable: without Debian's shared libstb, the
// writer's implementation is compiled here.
#pragma once

#ifndef DNNS_STB_SHARED
// No shared libstb: the writer's implementation lives here (its own code trips -Wextra).
#define STB_IMAGE_WRITE_IMPLEMENTATION
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb_image_write.h>
#ifndef DNNS_STB_SHARED
#pragma GCC diagnostic pop
#endif
