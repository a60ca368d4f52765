/* hopagent: Hopvisor's guest agent on a serial port. Line protocol, see src/vm/agent.ts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
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


/* IDENT: give a clone of a template state its identity with plain syscalls (no shell, no
 * fork: fast even while the emulator's JIT is cold). Argument: base64 of
 * "hostname mac ip/prefix gw mountdisk" with "-" for an absent field. */
static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n < 0 ? -1 : 0;
}

static const char *ident_net(int sock, const char *mac, const char *ipcidr, const char *gw) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
  if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) return "no eth0";
  short flags = ifr.ifr_flags;
  if (strcmp(mac, "-")) {
    unsigned m[6];
    if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) return "bad mac";
    ifr.ifr_flags = flags & ~IFF_UP;
    ioctl(sock, SIOCSIFFLAGS, &ifr);
    ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    for (int i = 0; i < 6; i++) ifr.ifr_hwaddr.sa_data[i] = (char)m[i];
    if (ioctl(sock, SIOCSIFHWADDR, &ifr) < 0) return "cannot set mac";
  }
  ifr.ifr_flags = flags | IFF_UP;
  if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) return "cannot bring eth0 up";
  if (strcmp(ipcidr, "-")) {
    char ip[64];
    int prefix = 24;
    snprintf(ip, sizeof ip, "%s", ipcidr);
    char *slash = strchr(ip, '/');
    if (slash) { *slash = 0; prefix = atoi(slash + 1); }
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1) return "bad ip";
    if (ioctl(sock, SIOCSIFADDR, &ifr) < 0) return "cannot set ip";
    sin->sin_addr.s_addr = prefix <= 0 ? 0 : htonl(0xffffffffu << (32 - prefix));
    if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0) return "cannot set netmask";
  }
  if (strcmp(gw, "-")) {
    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    struct sockaddr_in *g = (struct sockaddr_in *)&rt.rt_gateway;
    g->sin_family = AF_INET;
    if (inet_pton(AF_INET, gw, &g->sin_addr) != 1) return "bad gateway";
    ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(sock, SIOCADDRT, &rt) < 0 && errno != EEXIST) return "cannot add default route";
  }
  return NULL;
}

static void do_ident(const char *id, const char *b64) {
  unsigned char buf[1024];
  if (strlen(b64) > 1300) { reply_error(id, "IDENT argument too long"); return; }
  long len = b64dec(b64, buf);
  if (len < 0) { reply_error(id, "bad base64"); return; }
  buf[len] = 0;
  char host[256], mac[64], ip[64], gw[64], disk[8];
  if (sscanf((char *)buf, "%255s %63s %63s %63s %7s", host, mac, ip, gw, disk) != 5) { reply_error(id, "IDENT needs 5 fields"); return; }
  if (strcmp(host, "-") && sethostname(host, strlen(host)) < 0) { reply_error(id, "cannot set hostname"); return; }
  if (strcmp(mac, "-") || strcmp(ip, "-") || strcmp(gw, "-")) {
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const char *err = sock < 0 ? "no socket" : ident_net(sock, mac, ip, gw);
    if (sock >= 0) close(sock);
    if (err) { reply_error(id, err); return; }
  }
  if (!strcmp(disk, "mount")) {
    sync();
    write_file("/proc/sys/vm/drop_caches", "3\n");
    int ok = 0;
    for (int i = 0; i < 40 && !ok; i++) {
      struct stat st;
      if (stat("/dev/sda", &st) == 0 && mount("/dev/sda", "/data", "ext4", 0, NULL) == 0) ok = 1;
      else usleep(50000);
    }
    if (!ok) { char msg[128]; snprintf(msg, sizeof msg, "cannot mount /dev/sda on /data: %s", strerror(errno)); reply_error(id, msg); return; }
  }
  reply("OK", id, NULL);
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
  else if (!strcmp(verb, "IDENT") && arg) do_ident(id, arg);
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
    /* No commands running: sleep until the host writes (no periodic wake-ups of an idle guest). */
    int timeout = -1;
    for (int i = 0; i < MAX_JOBS; i++) {
      struct job *j = &jobs[i];
      if (!j->used) continue;
      if (timeout < 0) timeout = 200;
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
