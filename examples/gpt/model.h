/* model.h - a GPT-2 (as llm.c and nanoGPT have it) in plain C: token and
 * position embeddings, pre-LayerNorm blocks of causal self-attention and
 * a GELU MLP, a final LayerNorm and a head tied to the token embedding.
 * Forward and backward by hand, in f32 (16-bit compute copies are read
 * through f32 views), matmuls by cblas_sgemm; the parameters and their
 * gradients are tandem's, each module fetched around its use so that
 * every ZeRO stage runs the same code. */
#ifndef GPT_MODEL_H
#define GPT_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <tandem.h>

typedef struct gpt_config {
  int vocab, seq_len, layers, heads, channels;
} gpt_config;

typedef struct gpt_model gpt_model;

/* Before tdm_prepare: registers modules "embed" (wte, wpe; index 0),
 * "h.0" .. "h.<L-1>" (1..L) and "ln_f" (L+1) with parameters named as
 * torch's state_dict of bench/gpt_torch.py names them, GPT-2's init drawn
 * from a shared tdm_rng stream of seed: weights N(0, 0.02), the two
 * c_proj weights N(0, 0.02 / sqrt(2 layers)), biases 0, LayerNorm weight
 * 1 and bias 0.  Allocates activations for up to max_batch rows of
 * seq_len tokens.  Its loops and matmuls run on tdm_options.cpu_threads
 * threads (fewer where OMP_NUM_THREADS says so), BLAS single-threaded. */
tdm_status gpt_create(tdm_context *ctx, tdm_engine *e, const gpt_config *cfg,
                      int max_batch, uint64_t seed, gpt_model **m);

/* Forward on B rows of T <= seq_len tokens, tokens[b * stride + t].  With
 * loss != NULL the targets are tokens[b * stride + t + 1] (stride >= T + 1)
 * and *loss is the mean cross-entropy over the B * T positions.
 * Collective under ZeRO-3. */
tdm_status gpt_forward(gpt_model *m, const int32_t *tokens, int stride, int B,
                       int T, float *loss);

/* Backward of the last forward (which had targets): d(loss) * scale added
 * into tandem's gradients, each module marked ready when complete (the
 * embedding, which the head shares, last).  Collective under ZeRO-3. */
tdm_status gpt_backward(gpt_model *m, float scale);

/* The softmax over the vocabulary after position t of row b of the last
 * forward (vocab floats, valid until the next forward). */
const float *gpt_probs(const gpt_model *m, int b, int t);

/* Number of parameter elements of the model cfg describes. */
size_t gpt_param_count(const gpt_config *cfg);

void gpt_destroy(gpt_model *m);

#endif
