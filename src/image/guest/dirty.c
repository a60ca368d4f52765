/* dirty: rewrites a W MiB working set at R MiB/s (0 = flat out) for S seconds (0 = forever). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  long w = 0, r = 0, s = 0;
  int verbose = 0, c;
  while ((c = getopt(argc, argv, "w:r:s:v")) != -1) {
    if (c == 'w') w = atol(optarg);
    else if (c == 'r') r = atol(optarg);
    else if (c == 's') s = atol(optarg);
    else if (c == 'v') verbose = 1;
    else { fprintf(stderr, "usage: dirty -w MIB [-r MIBPS] [-s SECONDS] [-v]\n"); return 2; }
  }
  if (w <= 0) { fprintf(stderr, "dirty: -w MIB is required\n"); return 2; }
  size_t bytes = (size_t)w << 20, pages = bytes / 4096;
  volatile unsigned char *mem = malloc(bytes);
  if (!mem) { fprintf(stderr, "dirty: cannot allocate %ld MiB\n", w); return 1; }
  memset((void *)mem, 1, bytes);
  printf("DIRTY start w=%ld r=%ld\n", w, r);
  fflush(stdout);
  double start = now(), last = start;
  unsigned long written = 0, pass = 0, since = 0;
  unsigned char v = 2;
  for (;;) {
    for (size_t p = 0; p < pages; p++) {
      mem[p * 4096 + (pass % 4096)] = v;
      written += 4096;
      since += 4096;
      if (r > 0 && (p & 63) == 63) {
        double due = start + (double)written / ((double)r * 1048576.0);
        double t = now();
        if (due > t) { struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)}; nanosleep(&d, NULL); }
      }
    }
    pass++;
    v = (unsigned char)(v + 1) ? (unsigned char)(v + 1) : 2;
    double t = now();
    if (verbose && t - last >= 1.0) { fprintf(stderr, "DIRTY pass=%lu mibps=%.1f\n", pass, since / 1048576.0 / (t - last)); last = t; since = 0; }
    if (s > 0 && t - start >= s) break;
  }
  return 0;
}
