/* kvd: a small in-memory TCP key-value service (default port 7000), one reply line per request. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 64
#define MAX_KEYS 4096
#define LINE 1024

struct conn { int fd; char buf[LINE]; size_t len; };
static struct conn conns[MAX_CONNS];
static char *keys[MAX_KEYS], *vals[MAX_KEYS];
static int nkeys, nconns;
static unsigned long reqs;

static int find(const char *k) { for (int i = 0; i < nkeys; i++) if (!strcmp(keys[i], k)) return i; return -1; }

static const char *set(const char *k, const char *v) {
  int i = find(k);
  if (i < 0) { if (nkeys >= MAX_KEYS) return NULL; i = nkeys++; keys[i] = strdup(k); vals[i] = NULL; }
  free(vals[i]);
  vals[i] = strdup(v);
  return vals[i];
}

static void answer(int fd, const char *s) {
  size_t len = strlen(s);
  while (len > 0) { ssize_t n = write(fd, s, len); if (n <= 0) { if (n < 0 && errno == EINTR) continue; return; } s += n; len -= (size_t)n; }
}

static void request(int fd, char *line) {
  char out[LINE + 64];
  char *cmd = strtok(line, " "), *a = strtok(NULL, " "), *b = strtok(NULL, "");
  reqs++;
  if (!cmd) snprintf(out, sizeof out, "ERR empty\n");
  else if (!strcmp(cmd, "PING")) snprintf(out, sizeof out, "PONG\n");
  else if (!strcmp(cmd, "SET") && a && b) snprintf(out, sizeof out, set(a, b) ? "OK\n" : "ERR full\n");
  else if (!strcmp(cmd, "GET") && a) { int i = find(a); if (i < 0) snprintf(out, sizeof out, "NONE\n"); else snprintf(out, sizeof out, "VALUE %s\n", vals[i]); }
  else if (!strcmp(cmd, "INCR") && a) {
    int i = find(a);
    long long n = i < 0 ? 0 : atoll(vals[i]);
    char num[32];
    snprintf(num, sizeof num, "%lld", n + 1);
    snprintf(out, sizeof out, set(a, num) ? "VALUE %s\n" : "ERR full\n", num);
  } else if (!strcmp(cmd, "SEQ") && a) snprintf(out, sizeof out, "SEQ %s\n", a);
  else if (!strcmp(cmd, "STATS")) snprintf(out, sizeof out, "STATS keys=%d conns=%d reqs=%lu\n", nkeys, nconns, reqs);
  else snprintf(out, sizeof out, "ERR unknown command\n");
  answer(fd, out);
}

int main(int argc, char **argv) {
  int port = 7000, c;
  while ((c = getopt(argc, argv, "p:")) != -1) { if (c == 'p') port = atoi(optarg); else return 2; }
  signal(SIGPIPE, SIG_IGN);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 16) < 0) { perror("kvd"); return 1; }
  for (int i = 0; i < MAX_CONNS; i++) conns[i].fd = -1;
  for (;;) {
    struct pollfd fds[MAX_CONNS + 1];
    int idx[MAX_CONNS + 1], n = 0;
    fds[n].fd = ls; fds[n].events = POLLIN; n++;
    for (int i = 0; i < MAX_CONNS; i++) if (conns[i].fd >= 0) { fds[n].fd = conns[i].fd; fds[n].events = POLLIN; idx[n] = i; n++; }
    if (poll(fds, (nfds_t)n, -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      int fd = accept(ls, NULL, NULL);
      if (fd >= 0) {
        int slot = -1;
        for (int i = 0; i < MAX_CONNS; i++) if (conns[i].fd < 0) { slot = i; break; }
        if (slot < 0) close(fd);
        else { setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); conns[slot].fd = fd; conns[slot].len = 0; nconns++; }
      }
    }
    for (int k = 1; k < n; k++) {
      if (!fds[k].revents) continue;
      struct conn *cn = &conns[idx[k]];
      char buf[2048];
      ssize_t got = read(cn->fd, buf, sizeof buf);
      if (got <= 0) { close(cn->fd); cn->fd = -1; nconns--; continue; }
      for (ssize_t i = 0; i < got; i++) {
        if (buf[i] == '\n') {
          cn->buf[cn->len] = 0;
          if (cn->len > 0 && cn->buf[cn->len - 1] == '\r') cn->buf[cn->len - 1] = 0;
          request(cn->fd, cn->buf);
          cn->len = 0;
        } else if (cn->len < LINE - 1) cn->buf[cn->len++] = buf[i];
      }
    }
  }
}
