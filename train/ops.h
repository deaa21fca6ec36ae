// ops.h: the compute kernels of GPT-2 training, forward and backward, in the llm.c style: plain
// float arrays with shape comments, no allocation. Matrix products go through cblas_sgemm (this
// module's ops.c is the only file that includes the BLAS header); everything else is OpenMP and
// written to vectorize. Call from the trainer thread only (kernels use OpenMP internally).
//
// Conventions: N = B*T rows; C channels; OC output channels; V vocabulary; NH heads.
// Linear weights use PyTorch's (OC, C) layout. Every backward kernel ACCUMULATES (+=) into all of
// its gradient outputs (parameter and input gradients alike); a NULL gradient output is skipped.
#ifndef OPS_H
#define OPS_H

#include <stddef.h>
#include <stdint.h>

// ops_init sets the number of compute threads for OpenMP and BLAS (0 = all cores) and returns
// the number in use. Call once before any kernel; calling again changes the count.
int ops_init(int threads);

// ops_threads returns the thread count set by ops_init.
int ops_threads(void);

// ops_blas_name describes the BLAS in use ("OpenBLAS 0.3.21 Haswell openmp", "Accelerate").
const char *ops_blas_name(void);

// ops_sgemm is a thin row-major wrapper: C(M,N) = alpha * op(A) op(B) + beta * C with lda, ldb,
// ldc as in cblas_sgemm (CblasRowMajor). transa/transb are 0 or 1.
void ops_sgemm(int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);

// ops_encoder_forward: out(B,T,C) = wte[inp[b,t]] + wpe[t]. inp (B,T) token ids in [0, V).
void ops_encoder_forward(float *out, const int32_t *inp, const float *wte, const float *wpe, int B,
                         int T, int C);
// ops_encoder_backward: dwte[inp[b,t]] += dout[b,t]; dwpe[t] += dout[b,t]. Deterministic.
void ops_encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *inp, int B,
                          int T, int C);

// ops_layernorm_forward: out(N,C) = (inp - mean) * rstd * w + b, with eps 1e-5 as PyTorch.
// mean(N) and rstd(N) are saved for the backward pass.
void ops_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                           const float *b, int N, int C);
// ops_layernorm_backward accumulates dinp(N,C), dw(C), db(C).
void ops_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                            const float *w, const float *mean, const float *rstd, int N, int C);

// ops_matmul_forward: out(N,OC) = inp(N,C) @ w(OC,C)^T + bias(OC); bias may be NULL.
void ops_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N,
                        int C, int OC);
// ops_matmul_backward accumulates dinp(N,C) += dout @ w, dw(OC,C) += dout^T @ inp,
// dbias(OC) += column sums of dout. Any of dinp, dw, dbias may be NULL.
void ops_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int N, int C, int OC);

// ops_attention_forward: causal multi-head self-attention. qkv (B,T,3C) holds q, k, v packed
// along the last axis (head h uses channels h*hs .. h*hs+hs-1 of each, hs = C/NH).
// att (B,NH,T,T) receives the softmax probabilities (entries above the diagonal are 0) and is
// kept for the backward pass. out (B,T,C) = att @ v, heads concatenated.
void ops_attention_forward(float *out, float *att, const float *qkv, int B, int T, int C, int NH);
// ops_attention_backward accumulates dqkv(B,T,3C). scratch must hold B*NH*T*T floats and is
// overwritten.
void ops_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, int B, int T, int C, int NH);

// ops_gelu_forward: out(n) = GELU(inp) with the tanh approximation (nanoGPT's
// nn.GELU(approximate='tanh')). out may alias inp.
void ops_gelu_forward(float *out, const float *inp, size_t n);
// ops_gelu_backward accumulates dinp(n) += GELU'(inp) * dout.
void ops_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

// ops_add: out(n) = a + b. out may alias a or b.
void ops_add(float *out, const float *a, const float *b, size_t n);
// ops_acc: dst(n) += src.
void ops_acc(float *dst, const float *src, size_t n);

// ops_softmax_xent_forward: for each of N rows, probs(N,V) = softmax(logits) and
// losses(N) = -log probs[targets]. probs may alias logits. targets < 0 are ignored (loss 0).
void ops_softmax_xent_forward(float *losses, float *probs, const float *logits,
                              const int32_t *targets, int N, int V);
// ops_softmax_xent_backward OVERWRITES dlogits(N,V) = (probs - onehot(targets)) * scale, where
// scale is dloss for each row (1/N for a mean loss). dlogits may alias probs. Rows with a
// negative target get zero gradient.
void ops_softmax_xent_backward(float *dlogits, const float *probs, const int32_t *targets,
                               float scale, int N, int V);

// ops_sumsq returns the sum of squares of x(n), accumulated in double (for grad-norm clipping).
double ops_sumsq(const float *x, size_t n);
// ops_scale: x(n) *= s.
void ops_scale(float *x, float s, size_t n);

// ops_adamw_step updates one tensor in place with AdamW (PyTorch semantics, decoupled weight
// decay), on the gradient g*gscale (gscale folds global-norm clipping into this pass; use 1 for
// none): m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; p -= lr*(m/(1-b1^t) / (sqrt(v/(1-b2^t))
// + eps) + wd*p). t is the 1-based step count.
void ops_adamw_step(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                    float b2, float eps, float wd, int t, float gscale);

// ops_zero: x(n) = 0, in parallel.
void ops_zero(float *x, size_t n);

#endif
