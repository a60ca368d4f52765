/* kvc HOST PORT CMD...: sends one request line to kvd and prints the reply line. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: kvc HOST PORT CMD...\n"); return 2; }
  char line[2048] = "";
  for (int i = 3; i < argc; i++) { if (i > 3) strncat(line, " ", sizeof line - strlen(line) - 1); strncat(line, argv[i], sizeof line - strlen(line) - 2); }
  strcat(line, "\n");
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) { fprintf(stderr, "kvc: bad address %s\n", argv[1]); return 1; }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("kvc: connect"); return 1; }
  if (write(fd, line, strlen(line)) < 0) { perror("kvc: write"); return 1; }
  char buf[2048];
  size_t len = 0;
  while (len < sizeof buf - 1) {
    ssize_t n = read(fd, buf + len, 1);
    if (n <= 0) { fprintf(stderr, "kvc: connection closed\n"); return 1; }
    len++;
    if (buf[len - 1] == '\n') break;
  }
  fwrite(buf, 1, len, stdout);
  return 0;
}
