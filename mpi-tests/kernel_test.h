/* kernel_test.h - what the kernel unit tests (u_kernels, u_cuda_kernels)
 * share: counted failures, bit access, a deterministic random stream, and
 * PyTorch's conversion bits read from tests/data/half_torch.txt. */
#ifndef TDM_KERNEL_TEST_H
#define TDM_KERNEL_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem.h"

static int failures;
#define MAX_SHOWN 60

static void fail(const char *file, int line, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(const char *file, int line, const char *format, ...) {
  if (failures++ < MAX_SHOWN) {
    va_list ap;
    va_start(ap, format);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, format, ap);
    fputc('\n', stderr);
    va_end(ap);
  } else if (failures == MAX_SHOWN + 1) {
    fprintf(stderr, "(further failures counted, not shown)\n");
  }
}
#define CHECK(cond, ...)                        \
  do {                                          \
    if (!(cond))                                \
      fail(__FILE__, __LINE__, __VA_ARGS__);    \
  } while (0)

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* Deterministic xorshift64* stream. */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint32_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 0x2545f4914f6cdd1du) >> 32);
}
/* Uniform in [-1, 1). */
static float unif(void) { return (float)((int32_t)rnd()) * 0x1p-31f; }

static const char *dtype_name(tdm_dtype d) {
  return d == TDM_F32    ? "f32"
         : d == TDM_F64  ? "f64"
         : d == TDM_BF16 ? "bf16"
         : d == TDM_F16  ? "f16"
                         : "?";
}

/* ---- PyTorch's conversions: f32 bits, its bf16 and f16 bits ---------- */

static uint32_t *ref_f32;
static uint16_t *ref_bf16, *ref_f16;
static size_t nref;

static void read_reference(const char *path) {
  FILE *fp = fopen(path, "r");
  CHECK(fp != NULL, "cannot open %s", path);
  if (!fp)
    return;
  size_t cap = 16384;
  ref_f32 = malloc(cap * sizeof *ref_f32);
  ref_bf16 = malloc(cap * sizeof *ref_bf16);
  ref_f16 = malloc(cap * sizeof *ref_f16);
  char line[256];
  unsigned a, b, c;
  while (fgets(line, sizeof line, fp)) {
    if (line[0] == '#' || sscanf(line, "%x %x %x", &a, &b, &c) != 3)
      continue;
    if (nref == cap) {
      cap *= 2;
      ref_f32 = realloc(ref_f32, cap * sizeof *ref_f32);
      ref_bf16 = realloc(ref_bf16, cap * sizeof *ref_bf16);
      ref_f16 = realloc(ref_f16, cap * sizeof *ref_f16);
    }
    ref_f32[nref] = a;
    ref_bf16[nref] = (uint16_t)b;
    ref_f16[nref] = (uint16_t)c;
    nref++;
  }
  fclose(fp);
  CHECK(nref > 10000, "only %zu reference values read from %s", nref, path);
}

#endif
