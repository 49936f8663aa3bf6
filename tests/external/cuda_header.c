/* cuda_header.c - the installed tandem_cuda.h outside the tree, built
 * with pkg-config's flags plus the CUDA toolkit's include folder and
 * -lcudart: it compiles as C11, and its calls link and answer a NULL
 * engine with TDM_ERR_INVALID_ARGUMENT. */
#include <stdio.h>
#include <tandem_cuda.h>

int main(void) {
  cudaStream_t s = NULL;
  int ok = tdm_set_cuda_stream(NULL, s) == TDM_ERR_INVALID_ARGUMENT &&
           tdm_get_cuda_stream(NULL, &s) == TDM_ERR_INVALID_ARGUMENT;
  printf("tandem_cuda.h: %s\n", ok ? "ok" : tdm_last_error());
  return ok ? 0 : 1;
}
