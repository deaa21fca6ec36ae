// err.h: error codes, a thread-local error message, OOM-aborting allocators and ASSERT.
// Fallible functions return ERR_OK (0) or a positive code and describe the failure with
// err_set(); the caller that handles the error reads err_msg(). Safe from any thread.
#ifndef ERR_H
#define ERR_H

#include <stddef.h>

enum {
    ERR_OK = 0,
    ERR_NOMEM,   // allocation failed (only where we choose not to abort)
    ERR_INVAL,   // bad argument, bad config value, bad command line
    ERR_IO,      // open/read/write/rename failed
    ERR_FORMAT,  // a file or message has the wrong magic, version, shape or length
    ERR_NET,     // transport failure
    ERR_TIMEOUT, // a deadline passed
    ERR_CLOSED,  // the object was closed while waiting
    ERR_PEER,    // a peer misbehaved or is gone
    ERR_COUNT_
};

// err_set formats a detail message into this thread's error buffer and returns code, so a
// failing function can `return err_set(ERR_IO, "cannot open '%s'", path);`. The arguments may
// include err_msg() itself, to wrap the message set before: err_set(rc, "loading: %s", err_msg()).
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// err_msg returns this thread's last message set by err_set ("" if none). The pointer stays
// valid until the next err_set on the same thread.
const char *err_msg(void);

// err_str returns the symbolic name of an error code ("ERR_IO"), or "ERR_?" if unknown.
const char *err_str(int code);

// err_oom is the one out-of-memory abort (the redis zmalloc pattern): it prints
// "spartan: out of memory (<what>[, <n> bytes])" as one line on stderr and aborts. xmalloc and
// friends call it, and so does every caller of a library that reports a failed allocation
// (open_memstream, PCRE2, jansson, libmicrohttpd): a failed allocation is never ignored and never
// handled anywhere else. n = 0 when the size is unknown. Any thread.
void err_oom(const char *what, size_t n) __attribute__((noreturn));

// xmalloc, xcalloc, xrealloc and xstrdup allocate or abort through err_oom. The caller owns the
// result (free).
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

// xalloc_aligned returns 64-byte aligned memory of n bytes (release with free) or aborts through
// err_oom.
void *xalloc_aligned(size_t n);

// err_assert_fail prints the failed condition and aborts; use through ASSERT.
void err_assert_fail(const char *cond, const char *file, int line) __attribute__((noreturn));

// ASSERT stays on in release builds; it is for programmer errors only, never for bad input.
#define ASSERT(c) ((c) ? (void)0 : err_assert_fail(#c, __FILE__, __LINE__))

#endif
