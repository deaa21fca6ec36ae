// http_impl.h: the daemon set-up that http.c and srv.c share (infer/ only): resolve the address,
// report why it cannot be bound, start libmicrohttpd on it, log its messages. Caller's thread.
#ifndef HTTP_IMPL_H
#define HTTP_IMPL_H

#include <microhttpd.h>

// http_mhd_start starts a libmicrohttpd daemon with flags (MHD_USE_ERROR_LOG and, for an IPv6
// address, MHD_USE_IPv6 are added) on host:port, answering with fn(cls, ...); opts (may be NULL)
// are further options ending with MHD_OPTION_END, passed through MHD_OPTION_ARRAY. libmicrohttpd's
// messages are logged at DEBUG under tag (a static string). On success *out is the daemon (the
// caller stops it with MHD_stop_daemon) and *bound its port. Returns ERR_OK, or ERR_NET with
// "cannot listen on HOST:PORT: REASON".
int http_mhd_start(struct MHD_Daemon **out, int *bound, const char *host, int port, unsigned flags,
                   MHD_AccessHandlerCallback fn, void *cls, struct MHD_OptionItem *opts,
                   const char *tag);

#endif
