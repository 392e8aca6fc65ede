/*
 * pull_and_expose.c: the C API end to end on loopback.
 *
 * Exposes a temporary file on 127.0.0.1 (ephemeral port), pulls it back with a
 * progress callback, checks the bytes and the report, checks the error codes
 * (NULL, bad UTF-8, wrong key, cancellation), and echoes a line over a connection.
 *
 *   make -C examples/c run        (builds librgtp first: cargo build --release -p rgtp-capi)
 *
 * Exit status 0 when every check passed.
 */
#include <rgtp.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                       \
      fprintf(stderr, "\n");                              \
      failures++;                                         \
    }                                                     \
  } while (0)

struct progress_seen {
  int calls;
  uint64_t last_stored;
  uint16_t share_port;
};

static int on_progress(const rgtp_progress *p, void *user) {
  struct progress_seen *seen = user;
  seen->calls++;
  if (p->kind == RGTP_PROGRESS_RUNNING) seen->last_stored = p->stored;
  if (p->kind == RGTP_PROGRESS_SHARING) seen->share_port = p->share_port;
  return 0; /* go on */
}

static int cancel_at_once(const rgtp_progress *p, void *user) {
  (void)p;
  (void)user;
  return 1; /* nonzero: cancel the pull */
}

static int same_file(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  int same = fa && fb;
  while (same) {
    int ca = fgetc(fa), cb = fgetc(fb);
    if (ca != cb) same = 0;
    if (ca == EOF || cb == EOF) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

struct echo_server {
  rgtp_listener *l;
  int rc;
};

static void *echo_once(void *arg) {
  struct echo_server *s = arg;
  char err[256];
  rgtp_conn *c = NULL;
  s->rc = rgtp_listener_accept(s->l, &c, err, sizeof err);
  if (s->rc != RGTP_OK) return NULL;
  uint8_t buf[64];
  size_t n = 0;
  s->rc = rgtp_conn_read(c, buf, sizeof buf, &n, err, sizeof err);
  if (s->rc == RGTP_OK) s->rc = rgtp_conn_write(c, buf, n, err, sizeof err);
  int rc = rgtp_conn_close(c, 5000, err, sizeof err);
  if (s->rc == RGTP_OK) s->rc = rc;
  return NULL;
}

int main(void) {
  char err[512];
  char dir[] = "/tmp/rgtp-c-example.XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  char src[600], out[600], out2[600], keyfile[600], known[600];
  snprintf(src, sizeof src, "%s/data.bin", dir);
  snprintf(out, sizeof out, "%s/copy.bin", dir);
  snprintf(out2, sizeof out2, "%s/copy2.bin", dir);
  snprintf(keyfile, sizeof keyfile, "%s/exposer.key", dir);
  snprintf(known, sizeof known, "%s/known_exposers", dir);

  /* 3 MB + a partial chunk of pseudo-random bytes. */
  FILE *f = fopen(src, "wb");
  if (!f) {
    perror(src);
    return 1;
  }
  uint32_t x = 2463534242u;
  for (long i = 0; i < 3 * 1000 * 1000 + 4321; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    fputc((int)(x & 0xff), f);
  }
  fclose(f);

  printf("librgtp %s\n", rgtp_version());

  /* Expose it on an ephemeral port of 127.0.0.1, with a key file of our own. */
  rgtp_expose_options eo = {0};
  eo.key_path = keyfile;
  eo.cache_dir = dir;
  rgtp_exposer *ex = NULL;
  int rc = rgtp_expose_start(src, "127.0.0.1", 0, &eo, &ex, err, sizeof err);
  if (rc != RGTP_OK) {
    fprintf(stderr, "expose: %s (%s)\n", err, rgtp_status_name(rc));
    return 1;
  }
  size_t need = rgtp_exposer_url(ex, NULL, 0); /* the length, as snprintf */
  char *url = malloc(need + 1);
  CHECK(rgtp_exposer_url(ex, url, need + 1) == need, "url length");
  char small[8] = "unset";
  CHECK(rgtp_exposer_url(ex, small, sizeof small) == need && strcmp(small, "unset") == 0,
        "a short buffer is left alone");
  printf("exposing %s (port %u)\n", url, rgtp_exposer_port(ex));

  /* The simple call. */
  rc = rgtp_pull(url, out, err, sizeof err);
  CHECK(rc == RGTP_OK, "rgtp_pull: %d %s", rc, err);
  CHECK(same_file(src, out), "pulled bytes differ");

  /* Options, progress and the report. */
  rgtp_pull_options po = {0};
  po.known_exposers = known;
  struct progress_seen seen = {0};
  rgtp_pull_report rep;
  rc = rgtp_pull_ex(url, out2, &po, on_progress, &seen, NULL, &rep, err, sizeof err);
  CHECK(rc == RGTP_OK, "rgtp_pull_ex: %d %s", rc, err);
  CHECK(same_file(src, out2), "pulled bytes differ (pull_ex)");
  CHECK(rep.bytes == 3 * 1000 * 1000 + 4321, "report bytes %llu", (unsigned long long)rep.bytes);
  uint8_t root[32];
  CHECK(rgtp_exposer_root(ex, root) == RGTP_OK && memcmp(root, rep.root, 32) == 0, "root");
  printf("pulled %llu bytes in %.3f s (%.0f MB/s), %llu datagrams, %d progress calls\n",
         (unsigned long long)rep.bytes, rep.seconds, rep.throughput / 1e6,
         (unsigned long long)rep.datagrams_received, seen.calls);

  CHECK(strcmp(rep.cipher, "aes-256-gcm") == 0 || strcmp(rep.cipher, "chacha20-poly1305") == 0,
        "report cipher: \"%s\"", rep.cipher);
  CHECK(rep.sources == 1 && rep.sources_dropped == 0, "one source: %u", rep.sources);

  /* Two sources of the same root (--from), repair fragments forced (--fec 4:2), and
     sharing while pulling (--share): the report and the progress say what happened. */
  rgtp_expose_options eo2 = eo;
  rgtp_exposer *ex2 = NULL;
  rc = rgtp_expose_start(src, "127.0.0.1", 0, &eo2, &ex2, err, sizeof err);
  CHECK(rc == RGTP_OK, "second exposer: %d %s", rc, err);
  if (rc == RGTP_OK) {
    char second[64];
    snprintf(second, sizeof second, "127.0.0.1:%u", rgtp_exposer_port(ex2));
    const char *from[] = {second};
    rgtp_pull_options so = po;
    so.from = from;
    so.from_count = 1;
    so.fec = "4:2";
    so.share = 1;
    struct progress_seen seen2 = {0};
    char out4[600];
    snprintf(out4, sizeof out4, "%s/copy4.bin", dir);
    rc = rgtp_pull_ex(url, out4, &so, on_progress, &seen2, NULL, &rep, err, sizeof err);
    CHECK(rc == RGTP_OK, "two sources: %d %s", rc, err);
    CHECK(same_file(src, out4), "pulled bytes differ (two sources)");
    CHECK(rep.sources == 2, "sources: %u", rep.sources);
    CHECK(rep.repair_fragments + rep.surplus_repair_fragments > 0,
          "--fec 4:2 got no repair fragments");
    CHECK(rep.share_port != 0 && seen2.share_port == rep.share_port, "share port %u / %u",
          rep.share_port, seen2.share_port);
    printf("two sources, fec 4:2, shared on port %u: %llu repair fragments, cipher %s\n",
           rep.share_port, (unsigned long long)(rep.repair_fragments + rep.surplus_repair_fragments), rep.cipher);
    so.fec = "4";
    rc = rgtp_pull_ex(url, out4, &so, NULL, NULL, NULL, NULL, err, sizeof err);
    CHECK(rc == RGTP_E_USAGE, "bad fec: %d %s", rc, err);
    so.fec = NULL;
    so.from = NULL;
    rc = rgtp_pull_ex(url, out4, &so, NULL, NULL, NULL, NULL, err, sizeof err);
    CHECK(rc == RGTP_E_NULL, "NULL from with a count: %d %s", rc, err);
    CHECK(rgtp_exposer_stop(ex2, err, sizeof err) == RGTP_OK, "stop second: %s", err);
    rgtp_exposer_free(ex2);
  }

  /* Error codes. */
  rc = rgtp_pull(NULL, out, err, sizeof err);
  CHECK(rc == RGTP_E_NULL, "NULL url: %d", rc);
  rc = rgtp_pull("rgtp://\xff\xfe/x", out, err, sizeof err);
  CHECK(rc == RGTP_E_UTF8, "bad UTF-8: %d", rc);
  rc = rgtp_pull("http://example.org/x", out, err, sizeof err);
  CHECK(rc == RGTP_E_USAGE, "http URL: %d %s", rc, err);
  po.key_hex = "0000000000000000000000000000000000000000000000000000000000000001";
  rc = rgtp_pull_ex(url, out2, &po, NULL, NULL, NULL, NULL, err, sizeof err);
  CHECK(rc == RGTP_E_KEY_MISMATCH, "wrong key: %d %s", rc, err);
  po.key_hex = NULL;
  printf("wrong key -> %s: %s\n", rgtp_status_name(rc), err);

  /* Cancellation: by the callback's return, and by a handle set beforehand. */
  char out3[600];
  snprintf(out3, sizeof out3, "%s/copy3.bin", dir);
  po.connect_timeout_ms = 2000;
  rc = rgtp_pull_ex("rgtp://127.0.0.1:9/none", out3, &po, cancel_at_once, NULL, NULL, NULL, err,
                    sizeof err);
  CHECK(rc == RGTP_E_CANCELLED, "callback cancel: %d %s", rc, err);
  rgtp_cancel *cancel = rgtp_cancel_new();
  rgtp_cancel_set(cancel);
  rc = rgtp_pull_ex(url, out3, &po, NULL, NULL, cancel, NULL, err, sizeof err);
  CHECK(rc == RGTP_E_CANCELLED, "handle cancel: %d %s", rc, err);
  rgtp_cancel_free(cancel);

  /* Stop: idempotent; the URL stays readable; nothing answers any more. */
  CHECK(rgtp_exposer_stop(ex, err, sizeof err) == RGTP_OK, "stop: %s", err);
  CHECK(rgtp_exposer_stop(ex, err, sizeof err) == RGTP_OK, "second stop");
  po.connect_timeout_ms = 1000;
  rc = rgtp_pull_ex(url, out3, &po, NULL, NULL, NULL, NULL, err, sizeof err);
  CHECK(rc == RGTP_E_UNREACHABLE, "after stop: %d %s", rc, err);
  rgtp_exposer_free(ex);
  free(url);

  /* Expose a missing file. */
  rc = rgtp_expose_start("/nonexistent/file", "127.0.0.1", 0, &eo, &ex, err, sizeof err);
  CHECK(rc == RGTP_E_FILE && ex == NULL, "missing file: %d %s", rc, err);

  /* A connection: echo one line. */
  struct echo_server srv = {0};
  rc = rgtp_listen("127.0.0.1:0", &srv.l, err, sizeof err);
  CHECK(rc == RGTP_OK, "listen: %s", err);
  if (rc == RGTP_OK) {
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", rgtp_listener_port(srv.l));
    pthread_t t;
    pthread_create(&t, NULL, echo_once, &srv);
    rgtp_conn *c = NULL;
    rc = rgtp_conn_connect(addr, 5000, &c, err, sizeof err);
    CHECK(rc == RGTP_OK, "connect: %s", err);
    if (rc == RGTP_OK) {
      const char *line = "hello over rgtp\n";
      rc = rgtp_conn_write(c, (const uint8_t *)line, strlen(line), err, sizeof err);
      CHECK(rc == RGTP_OK, "write: %s", err);
      char back[64] = {0};
      size_t got = 0, n = 0;
      while (got < strlen(line)) {
        rc = rgtp_conn_read(c, (uint8_t *)back + got, sizeof back - 1 - got, &n, err, sizeof err);
        if (rc != RGTP_OK || n == 0) break;
        got += n;
      }
      CHECK(strcmp(back, line) == 0, "echo: got %zu bytes: %s", got, back);
      CHECK(rgtp_conn_close(c, 5000, err, sizeof err) == RGTP_OK, "close: %s", err);
      printf("connection echo: %s", back);
    }
    pthread_join(t, NULL);
    CHECK(srv.rc == RGTP_OK, "server: %d", srv.rc);
    rgtp_listener_free(srv.l);
  }

  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C example: all checks passed\n");
  return 0;
}
