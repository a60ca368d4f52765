/* hopagent: Hopvisor's guest agent on a serial port. Line protocol, see src/vm/agent.ts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (64 * 1024)
#define MAX_JOBS 32
#define CHUNK 3072

struct job {
  int used;
  pid_t pid;
  char id[32];
  int out, err; /* -1 when closed */
  int exited, status;
  long long exit_at;
};

static int tty = -1;
static struct job jobs[MAX_JOBS];

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(tty, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { struct pollfd p = {tty, POLLOUT, 0}; poll(&p, 1, 100); continue; }
      return;
    }
    buf += n;
    len -= (size_t)n;
  }
}

static const char b64c[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64enc(const unsigned char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = in[i] << 16;
    if (i + 1 < len) v |= in[i + 1] << 8;
    if (i + 2 < len) v |= in[i + 2];
    out[o++] = b64c[(v >> 18) & 63];
    out[o++] = b64c[(v >> 12) & 63];
    out[o++] = i + 1 < len ? b64c[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < len ? b64c[v & 63] : '=';
  }
  out[o] = 0;
  return o;
}

static int b64val(char c) {
  const char *p = strchr(b64c, c);
  return (c && p) ? (int)(p - b64c) : -1;
}

static long b64dec(const char *in, unsigned char *out) {
  long o = 0;
  int acc = 0, bits = 0;
  for (; *in && *in != '='; in++) {
    int v = b64val(*in);
    if (v < 0) return -1;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) { bits -= 8; out[o++] = (unsigned char)((acc >> bits) & 0xff); }
  }
  return o;
}

static void reply(const char *kind, const char *id, const char *rest) {
  char head[128];
  int n = snprintf(head, sizeof head, "%s %s", kind, id);
  write_all(head, (size_t)n);
  if (rest) { write_all(" ", 1); write_all(rest, strlen(rest)); }
  write_all("\n", 1);
}

static void reply_error(const char *id, const char *msg) {
  char enc[512];
  b64enc((const unsigned char *)msg, strlen(msg) > 300 ? 300 : strlen(msg), enc);
  reply("ERROR", id && *id ? id : "-", enc);
}

static void start_exec(const char *id, const char *b64) {
  int slot = -1;
  for (int i = 0; i < MAX_JOBS; i++) if (!jobs[i].used) { slot = i; break; }
  if (slot < 0) { reply_error(id, "too many commands running"); return; }
  unsigned char *cmd = malloc(strlen(b64) + 4);
  long len = b64dec(b64, cmd);
  if (len < 0) { free(cmd); reply_error(id, "bad base64"); return; }
  cmd[len] = 0;
  int po[2], pe[2];
  if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) { free(cmd); reply_error(id, "pipe failed"); return; }
  pid_t pid = fork();
  if (pid < 0) { free(cmd); reply_error(id, "fork failed"); return; }
  if (pid == 0) {
    int nul = open("/dev/null", O_RDONLY);
    dup2(nul, 0);
    dup2(po[1], 1);
    dup2(pe[1], 2);
    setsid();
    signal(SIGPIPE, SIG_DFL);
    execl("/bin/sh", "sh", "-c", (char *)cmd, (char *)0);
    _exit(127);
  }
  free(cmd);
  close(po[1]);
  close(pe[1]);
  fcntl(po[0], F_SETFL, O_NONBLOCK);
  fcntl(pe[0], F_SETFL, O_NONBLOCK);
  struct job *j = &jobs[slot];
  memset(j, 0, sizeof *j);
  j->used = 1;
  j->pid = pid;
  snprintf(j->id, sizeof j->id, "%s", id);
  j->out = po[0];
  j->err = pe[0];
}

static void finish_job(struct job *j) {
  char code[16];
  int st = j->status;
  snprintf(code, sizeof code, "%d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0));
  if (j->out >= 0) close(j->out);
  if (j->err >= 0) close(j->err);
  reply("EXIT", j->id, code);
  j->used = 0;
}

static void drain(struct job *j, int *fd, const char *kind) {
  unsigned char buf[CHUNK];
  char enc[CHUNK * 4 / 3 + 8];
  for (;;) {
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) { b64enc(buf, (size_t)n, enc); reply(kind, j->id, enc); continue; }
    if (n == 0) { close(*fd); *fd = -1; }
    return;
  }
}

static void do_shutdown(const char *id) {
  reply("OK", id, NULL);
  tcdrain(tty);
  sync();
  umount2("/data", MNT_DETACH);
  sync();
  usleep(50000);
  reboot(RB_POWER_OFF);
}

static void handle_line(char *line) {
  char *verb = strtok(line, " ");
  char *id = strtok(NULL, " ");
  char *arg = strtok(NULL, " ");
  if (!verb || !id) { reply_error("-", "malformed line"); return; }
  if (!strcmp(verb, "PING")) reply("PONG", id, NULL);
  else if (!strcmp(verb, "EXEC") && arg) start_exec(id, arg);
  else if (!strcmp(verb, "TIME") && arg) {
    long long ms = atoll(arg);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    if (settimeofday(&tv, NULL) == 0) reply("OK", id, NULL);
    else reply_error(id, "settimeofday failed");
  } else if (!strcmp(verb, "SHUTDOWN")) do_shutdown(id);
  else reply_error(id, "unknown or malformed command");
}

int main(int argc, char **argv) {
  const char *dev = argc > 1 ? argv[1] : "/dev/ttyS1";
  signal(SIGPIPE, SIG_IGN);
  tty = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (tty < 0) { perror(dev); return 1; }
  struct termios t;
  if (tcgetattr(tty, &t) == 0) { cfmakeraw(&t); t.c_cc[VMIN] = 1; t.c_cc[VTIME] = 0; tcsetattr(tty, TCSANOW, &t); }
  tcflush(tty, TCIFLUSH);
  write_all("HELLO hopagent 1\n", 17);
  static char line[MAX_LINE + 1];
  size_t len = 0;
  int overflow = 0;
  for (;;) {
    struct pollfd fds[1 + 2 * MAX_JOBS];
    struct job *owner[1 + 2 * MAX_JOBS];
    int which[1 + 2 * MAX_JOBS];
    int n = 0;
    fds[n].fd = tty; fds[n].events = POLLIN; owner[n] = NULL; n++;
    int timeout = 200;
    for (int i = 0; i < MAX_JOBS; i++) {
      struct job *j = &jobs[i];
      if (!j->used) continue;
      if (j->out >= 0) { fds[n].fd = j->out; fds[n].events = POLLIN; owner[n] = j; which[n] = 1; n++; }
      if (j->err >= 0) { fds[n].fd = j->err; fds[n].events = POLLIN; owner[n] = j; which[n] = 2; n++; }
      if (j->exited) timeout = 20;
      /* Output done but not reaped yet: SIGCHLD does not wake poll(), so look again soon. */
      if (!j->exited && j->out < 0 && j->err < 0) timeout = 2;
    }
    int r = poll(fds, (nfds_t)n, timeout);
    if (r < 0 && errno != EINTR) return 1;
    for (int i = 1; i < n && r > 0; i++) {
      if (fds[i].revents) {
        struct job *j = owner[i];
        if (which[i] == 1 && j->out >= 0) drain(j, &j->out, "OUT");
        if (which[i] == 2 && j->err >= 0) drain(j, &j->err, "ERR");
      }
    }
    /* reap */
    for (;;) {
      int st;
      pid_t p = waitpid(-1, &st, WNOHANG);
      if (p <= 0) break;
      for (int i = 0; i < MAX_JOBS; i++)
        if (jobs[i].used && jobs[i].pid == p && !jobs[i].exited) { jobs[i].exited = 1; jobs[i].status = st; jobs[i].exit_at = now_ms(); }
    }
    for (int i = 0; i < MAX_JOBS; i++) {
      struct job *j = &jobs[i];
      if (!j->used || !j->exited) continue;
      if (j->out >= 0) drain(j, &j->out, "OUT");
      if (j->err >= 0) drain(j, &j->err, "ERR");
      if ((j->out < 0 && j->err < 0) || now_ms() - j->exit_at > 200) finish_job(j);
    }
    if (r > 0 && (fds[0].revents & POLLIN)) {
      char buf[4096];
      ssize_t got = read(tty, buf, sizeof buf);
      for (ssize_t k = 0; k < got; k++) {
        char c = buf[k];
        if (c == '\n') {
          if (overflow) reply_error("-", "line too long");
          else { line[len] = 0; if (len > 0 && line[len - 1] == '\r') line[len - 1] = 0; if (line[0]) handle_line(line); }
          len = 0;
          overflow = 0;
        } else if (len < MAX_LINE) line[len++] = c;
        else overflow = 1;
      }
    }
  }
}
