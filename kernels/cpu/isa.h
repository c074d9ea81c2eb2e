// Which instruction set the CPU kernels run with, chosen at run time from the CPU's features
// (one binary runs on an AVX2-only AMD EPYC and on an AVX-512 Xeon alike).
//
//   avx512   AVX-512 F + VL + FMA: 16-float vectors, 32 registers
//   avx2     AVX2 + FMA:            8-float vectors, 16 registers
//   generic  none of our vector kernels: convolutions go through im2col + OpenBLAS sgemm
//            (Winograd, when forced, through the generic build of its kernels) and the
//            streaming loops of rows.h run as built for the baseline, as on a CPU without AVX2
//            or a non-x86 machine
//
// DNNS_ISA=avx512|avx2|generic (environment) or set_cpu_isa() picks a path below the best one
// the CPU has, for tests and benchmarks; asking for one the CPU lacks is refused with an error.
#pragma once
#include <string>

#include "kernels/params.h"

namespace dnns::cpu {

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };

Isa best_cpu_isa();                 // the best path this CPU (and this build) supports
Isa cpu_isa();                      // the path the kernels use now
void set_cpu_isa(Isa isa);          // throws dnns::Error when isa > best_cpu_isa()
const char* isa_name(Isa isa);      // "avx512", "avx2", "generic"
Isa parse_isa(const char* name);    // inverse of isa_name; throws naming the bad value

// Convolution algorithm (kernels/cpu/conv.cpp): auto (the default) takes Winograd F(4x4, 3x3)
// or F(2x2, 3x3) (winograd.h) for the 3x3 stride-1 pad-1 convolutions where it measured faster (per op: 16+
// channels, 128+ tiles, enough outputs, not on the generic path; see conv.cpp), the direct kernels where they
// apply and the ISA has them, im2col + sgemm otherwise; gemm forces im2col + sgemm everywhere;
// direct is auto without Winograd; winograd is auto with Winograd for every shape it can do
// (3x3, stride 1, pad 1), whatever its size. DNNS_CONV=auto|gemm|direct|winograd sets the
// initial value.
enum class ConvAlgo { Auto = 0, Gemm = 1, Direct = 2, Winograd = 3 };
void set_conv_algo(ConvAlgo algo);
ConvAlgo conv_algo();
const char* conv_algo_name(ConvAlgo algo);
ConvAlgo parse_conv_algo(const char* name);  // throws naming the bad value
// The path a convolution of this shape takes now: "gemm" or "direct avx512/16" and the like.
std::string conv_path(const Conv2dParams& p);

}  // namespace dnns::cpu
