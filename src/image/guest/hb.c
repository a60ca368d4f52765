/* hb: prints "HB <seq>" every -i MS milliseconds (default 10), -n COUNT lines (default forever). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  long ms = 10, count = -1;
  int c;
  while ((c = getopt(argc, argv, "i:n:")) != -1) {
    if (c == 'i') ms = atol(optarg);
    else if (c == 'n') count = atol(optarg);
    else { fprintf(stderr, "usage: hb [-i MS] [-n COUNT]\n"); return 2; }
  }
  if (ms < 1) ms = 1;
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
  for (long seq = 1; count < 0 || seq <= count; seq++) {
    printf("HB %ld\n", seq);
    fflush(stdout);
    if (count < 0 || seq < count) nanosleep(&d, NULL);
  }
  return 0;
}
