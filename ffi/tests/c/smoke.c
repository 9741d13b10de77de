/* A C program using liblockbox.so through the generated header, linked the
 * ordinary way (-llockbox): the header's prototypes must match the library.
 * Built and run by `make test-ffi` against the test-hooks build. */
#include <stdio.h>
#include <string.h>
#include "lockbox.h"

static int failures = 0, checks = 0;

#define CHECK(cond, what)                                   \
  do {                                                      \
    checks++;                                               \
    if (!(cond)) {                                          \
      failures++;                                           \
      fprintf(stderr, "FAIL %s (line %d)\n", what, __LINE__); \
    }                                                       \
  } while (0)

/* Calls a method; returns the status and copies the reply into buf. */
static int call(const char *req, uint64_t cancel_id, char *buf, size_t cap) {
  uint8_t *out = NULL;
  size_t out_len = 0;
  int st = lockbox_call((const uint8_t *)req, strlen(req), cancel_id, &out, &out_len);
  size_t n = out_len < cap - 1 ? out_len : cap - 1;
  memcpy(buf, out, n);
  buf[n] = 0;
  lockbox_free(out, out_len);
  return st;
}

int main(void) {
  char buf[4096];
  CHECK(lockbox_abi_version() == LOCKBOX_ABI_VERSION, "abi version");

  uint8_t *out = NULL;
  size_t out_len = 0;
  CHECK(lockbox_version(&out, &out_len) == LOCKBOX_OK && out_len > 0, "version");
  lockbox_free(out, out_len);

  CHECK(call("{\"method\":\"noop\"}", 0, buf, sizeof buf) == LOCKBOX_OK && strcmp(buf, "{}") == 0, "noop");
  CHECK(call("{nope", 0, buf, sizeof buf) == LOCKBOX_ERR && strstr(buf, "\"invalid_argument\""), "malformed");
  CHECK(call("{\"method\":\"debug.panic\"}", 0, buf, sizeof buf) == LOCKBOX_ERR && strstr(buf, "\"internal\""), "panic");

  CHECK(call("{\"method\":\"debug.pipe\"}", 0, buf, sizeof buf) == LOCKBOX_OK, "pipe");
  unsigned long long h = 0;
  CHECK(sscanf(buf, "{\"handle\":%llu}", &h) == 1 && h != 0, "pipe handle");
  size_t n = 0;
  uint8_t *err = NULL;
  size_t err_len = 0;
  CHECK(lockbox_stream_write(h, (const uint8_t *)"hi", 2, 0, &n, &err, &err_len) == LOCKBOX_OK && n == 2, "write");
  CHECK(lockbox_stream_close_write(h, 0, &err, &err_len) == LOCKBOX_OK, "close_write");
  uint8_t rb[8];
  CHECK(lockbox_stream_read(h, rb, sizeof rb, 0, &n, &err, &err_len) == LOCKBOX_OK && n == 2 && memcmp(rb, "hi", 2) == 0, "read");
  CHECK(lockbox_stream_read(h, rb, sizeof rb, 0, &n, &err, &err_len) == LOCKBOX_OK && n == 0, "eof");
  CHECK(lockbox_close(h, &err, &err_len) == LOCKBOX_OK, "close");
  CHECK(lockbox_close(h, &err, &err_len) == LOCKBOX_OK, "double close");
  CHECK(lockbox_stream_read(h, rb, sizeof rb, 0, &n, &err, &err_len) == LOCKBOX_ERR && err != NULL, "stale handle");
  lockbox_free(err, err_len);

  CHECK(lockbox_cancel(77) == LOCKBOX_OK, "cancel");
  CHECK(call("{\"method\":\"debug.sleep\",\"params\":{\"ms\":600000}}", 77, buf, sizeof buf) == LOCKBOX_ERR &&
            strstr(buf, "\"canceled\""), "cancel before");
  lockbox_cancel_release(77);
  CHECK(lockbox_call(NULL, 0, 0, NULL, &out_len) == LOCKBOX_BAD_ARGS, "NULL out");

  if (failures) {
    fprintf(stderr, "c-abi smoke: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("c-abi smoke: %d checks passed\n", checks);
  return 0;
}
