/* u_core.c - serial unit tests of core internals: Philox4x32-10 against
 * all three Random123 known-answer vectors, and f16/bf16 rounding against
 * exhaustive round trips, hand-derived edge cases and NumPy's float16
 * conversion (tests/data/f16_numpy.txt, made by tests/gen_f16_numpy.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#include "unit_check.h"

static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_philox(void) {
  /* Random123 tests/kat_vectors, "philox4x32 10": ctr[4] key[2] -> out[4] */
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
       0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
       0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
  for (int v = 0; v < 3; v++) {
    uint32_t out[4];
    tdmi_philox4x32_10(kat[v], kat[v] + 4, out);
    for (int i = 0; i < 4; i++)
      CHECK(out[i] == kat[v][6 + i], "vector %d word %d: %08x", v, i, out[i]);
  }
}

static void test_f16_edges(void) {
  static const struct { uint32_t f32; uint16_t f16; } cases[] = {
      {0x3f800000, 0x3c00}, /* 1 */
      {0xc0000000, 0xc000}, /* -2 */
      {0x477fe000, 0x7bff}, /* 65504, largest finite */
      {0x477fefff, 0x7bff}, /* just below 65520 rounds down */
      {0x477ff000, 0x7c00}, /* 65520: tie, rounds to even = inf */
      {0x7f800000, 0x7c00}, /* inf */
      {0xff800000, 0xfc00}, /* -inf */
      {0x7fc00000, 0x7e00}, /* NaN -> canonical quiet NaN */
      {0x33800000, 0x0001}, /* 2^-24, smallest subnormal */
      {0x33000000, 0x0000}, /* 2^-25: tie between 0 and 2^-24 -> 0 */
      {0x33000001, 0x0001}, /* just above 2^-25 -> 2^-24 */
      {0x33c00000, 0x0002}, /* 1.5 * 2^-24: tie -> even (2) */
      {0x38800000, 0x0400}, /* 2^-14, smallest normal */
      {0x387fc000, 0x03ff}, /* largest subnormal */
      {0x80000000, 0x8000}, /* -0 */
      {0x3f801000, 0x3c00}, /* 1 + 2^-11: tie -> even (1) */
      {0x3f803000, 0x3c02}, /* 1 + 3*2^-11: tie -> even (1 + 2^-9) */
      {0x00000001, 0x0000}, /* f32 subnormal -> 0 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint16_t h = tdmi_f32_to_f16(from_bits(cases[i].f32));
    CHECK(h == cases[i].f16, "f32 %08x -> f16 %04x, want %04x", cases[i].f32,
          h, cases[i].f16);
  }
}

/* Every f16 and bf16 value survives the trip through f32 unchanged. */
static void test_round_trips(void) {
  for (uint32_t h = 0; h < 65536; h++) {
    int nan16 = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
    int nanbf = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
    if (!nan16)
      CHECK(tdmi_f32_to_f16(tdmi_f16_to_f32((uint16_t)h)) == h, "f16 %04x", h);
    if (!nanbf)
      CHECK(tdmi_f32_to_bf16(tdmi_bf16_to_f32((uint16_t)h)) == h, "bf16 %04x",
            h);
  }
  CHECK(tdmi_f32_to_bf16(from_bits(0x3f808000)) == 0x3f80, "bf16 tie to even");
  CHECK(tdmi_f32_to_bf16(from_bits(0x3f818000)) == 0x3f82, "bf16 tie up");
  CHECK(tdmi_f32_to_bf16(from_bits(0x3f808001)) == 0x3f81, "bf16 above tie");
  CHECK(tdmi_f32_to_bf16(from_bits(0x7f7fffff)) == 0x7f80, "bf16 overflow");
  CHECK(tdmi_f32_to_bf16(from_bits(0xffc00001)) == 0xffff, "bf16 NaN");
  CHECK(tdmi_f32_to_f16(from_bits(0x7fa12345)) == 0x7f09, "f16 NaN payload");
  CHECK(tdmi_f32_to_f16(from_bits(0xff800001)) == 0xfe00, "f16 sNaN");
}

static void test_numpy_reference(const char *path) {
  FILE *fp = fopen(path, "r");
  CHECK(fp != NULL, "cannot open %s", path);
  if (!fp)
    return;
  unsigned f32, f16, n = 0;
  char line[128];
  while (fgets(line, sizeof line, fp)) {
    if (line[0] == '#' || sscanf(line, "%x %x", &f32, &f16) != 2)
      continue;
    uint16_t got = tdmi_f32_to_f16(from_bits(f32));
    CHECK(got == f16, "f32 %08x -> %04x, NumPy %04x", f32, got, f16);
    n++;
  }
  fclose(fp);
  CHECK(n > 10000, "only %u reference values read", n);
}

int main(void) {
  const char *src = getenv("TDM_SRCDIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/f16_numpy.txt", src ? src : ".");
  test_philox();
  test_f16_edges();
  test_round_trips();
  test_numpy_reference(path);
  printf("u_core: %s (%d failed checks)\n", failures ? "FAIL" : "PASS",
         failures);
  return failures ? 1 : 0;
}
