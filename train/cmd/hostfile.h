// hostfile.h: the hostfile of `spartan launch HOSTFILE CONFIG ...` (issue 13): which machines run
// peers, how to reach them over ssh, and how many peers each runs. Two forms are read:
//
//   # text: one host per line, then key=value fields in any order; '#' starts a comment
//   mini1 user=alice dir=/srv/spartan slots=2
//   bob@mini2 ssh_port=2222 port=7100 threads=4
//   [fe80::1] slots=1
//
// and MLX's JSON hostfile (mlx.launch), either the bare array or the object that holds it under
// "hosts": [{"ssh": "mini1", "ips": ["10.0.0.1"]}, ...] or {"backend": ..., "hosts": [...]}.
// The form is told by the first character that is not white space: '{', or '[' followed by '{'
// or ']' (so a text file that starts with a bracketed IPv6 host stays text). Parsing is pure:
// no file but the one hostfile_load reads, no network, any thread.
#ifndef HOSTFILE_H
#define HOSTFILE_H

#include <stddef.h>

#define HOSTFILE_MAX_HOSTS   1024      // entries (lines or JSON elements) per file
#define HOSTFILE_MAX_IPS     8         // "ips" per JSON element
#define HOSTFILE_MAX_BYTES   (1 << 20) // hostfile_load reads at most this much
#define HOSTFILE_MAX_SLOTS   64
#define HOSTFILE_MAX_THREADS 256

// One entry of a hostfile. Strings are NUL-terminated and checked against the character sets
// below, so the launcher may put them on an ssh command line: none starts with '-', none holds
// white space, quotes or shell metacharacters.
//   host     a name or IPv4 address of [A-Za-z0-9._-] (not starting with '-' or '.'), or an IPv6
//            address (written bare or in brackets in the file; stored without the brackets, so
//            a ':' in it means IPv6). Up to 255 characters.
//   user     the ssh login ([A-Za-z0-9._-], up to 63; "" = ssh's default), from user=U or the
//            user@host form.
//   ssh_port 1-65535, default 22.
//   port     the first port the peers of this entry listen on, 1-65535; 0 (the default) = the
//            launcher picks. With slots=N the entry's peers take port .. port+N-1.
//   dir      the working directory on the host ([A-Za-z0-9/._~+,@%=:-], up to 511 characters;
//            "" = the launcher's default).
//   slots    peers on this host, 1-64, default 1.
//   threads  compute threads per peer, 0-256; 0 (the default) = the launcher divides the cores.
//   ips      the addresses the peers talk over (JSON "ips" only; n_ips = 0 = use host).
//   line     where the entry came from: the 1-based line of a text hostfile, or the 0-based
//            index of the JSON element (hostfile.json says which).
typedef struct hostfile_host {
    char host[256];
    char user[64];
    int ssh_port;
    int port;
    char dir[512];
    int slots;
    int threads;
    char ips[HOSTFILE_MAX_IPS][64];
    int n_ips;
    int line;
} hostfile_host;

// A parsed hostfile: hosts[0..n-1] in file order, n >= 1, and peers, the sum of their slots (the
// world size; peer ranks go through the hosts in order, slot by slot). Two entries never name the
// same host with overlapping ports (the same host twice needs distinct explicit ports, or one
// entry with slots=N). json is 1 when the file was MLX's JSON form.
typedef struct hostfile {
    hostfile_host *hosts;
    int n;
    int peers;
    int json;
} hostfile;

// hostfile_parse parses len bytes of text (NUL bytes included; no terminator needed) into *out;
// name is how messages call the text (a path; NULL = "hostfile"). On success returns ERR_OK and the
// caller owns out->hosts (hostfile_free). On failure *out is left empty ({0}) and the message
// starts with `name:line:` (text), `name: element I:` (JSON) or `name:` and names the field and the
// rule, e.g. `hosts.txt:3: ssh_port = 'abc': not a port (1-65535)`. Returns ERR_FORMAT for what
// does not parse: a field without '=', a second bare word, invalid JSON (with jansson's line:column
// and text), a JSON element that is not an object or has no string "ssh", "ips" that is not an
// array of strings, a JSON object without a "hosts" array. Returns ERR_INVAL for what parses but is
// wrong: len over HOSTFILE_MAX_BYTES, no hosts at all, an unknown or repeated field, an empty
// value, a number out of range, a value with a character its set does not allow, a value over its
// length limit (the message gives the limit), a host listed twice with the same or overlapping
// ports, more than HOSTFILE_MAX_HOSTS entries, or more than HOSTFILE_MAX_IPS ips. Any thread.
int hostfile_parse(hostfile *out, const char *text, size_t len, const char *name);

// hostfile_load reads the file at path (at most HOSTFILE_MAX_BYTES) and parses it as
// hostfile_parse does, with path as the name. Returns hostfile_parse's codes, or ERR_IO naming
// the path and the system's reason when the file cannot be opened or read, or ERR_INVAL when it
// is larger than HOSTFILE_MAX_BYTES. Ownership as in hostfile_parse. Any thread.
int hostfile_load(hostfile *out, const char *path);

// hostfile_free releases h->hosts and empties *h. NULL-safe, and safe on an empty hostfile.
void hostfile_free(hostfile *h);

#endif
