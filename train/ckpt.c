// ckpt.c: HDF5 checkpoints: named contiguous float32 datasets plus root attributes, written to
// "<path>.tmp", closed, fsync'ed and renamed. Invariant: the final path only ever holds a complete,
// fsync'ed file, and every failure of a writer removes its temp file. HDF5's own error printing is
// off on every calling thread; failures carry the file, the object and HDF5's innermost error
// text. Single-threaded: a serial HDF5 build is not thread-safe, so callers serialize all ckpt_
// calls, from whichever thread.
#include "train/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/base/err.h"
#include "train/base/sys.h"

struct ckpt_writer {
    hid_t file;
    hid_t lcpl; // link creation: make intermediate groups ("model/" in "model/x.weight")
    hid_t dcpl; // dataset creation: contiguous, never write fill values
    char *path, *tmp;
};

struct ckpt_reader {
    hid_t file;
    char *path;
};

// HDF5's innermost error description, captured right after a failed call (the next API call
// clears the stack).
typedef struct {
    char s[320];
} h5_detail;

// h5_init opens the library and turns HDF5's automatic error printing off for the calling
// thread. Thread-safe builds of HDF5 keep that setting per thread (with the thread's error
// stack), so every ckpt_ entry point calls this: turned off once, on the first thread only, it
// left other threads (the server's reload thread) printing HDF5-DIAG stacks to stderr.
static void h5_init(void) {
    static _Thread_local int quiet;
    if (quiet) return;
    H5open(); // idempotent
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    quiet = 1;
}

static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data) {
    h5_detail *d = data;
    // Walking upward, entry 0 is where the error was detected: the most specific text.
    if (n == 0 && e->desc && *e->desc) snprintf(d->s, sizeof d->s, "%s", e->desc);
    return 0;
}

static const char *h5_why(h5_detail *d) {
    d->s[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, d);
    if (!d->s[0]) snprintf(d->s, sizeof d->s, "unknown HDF5 error");
    return d->s;
}

// dir_of returns the directory part of path ("." if none); the caller frees it.
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return xstrdup(".");
    if (slash == path) return xstrdup("/");
    size_t n = (size_t)(slash - path);
    char *d = xmalloc(n + 1);
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

// fsync_file syncs the file at p to stable storage (F_FULLFSYNC on macOS, sys_fsync_durable).
static int fsync_file(const char *p) {
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(ERR_IO, "ckpt: cannot open '%s' to fsync: %s", p, strerror(errno));
    int rc = ERR_OK;
    if (sys_fsync_durable(fd) != 0)
        rc = err_set(ERR_IO, "ckpt: fsync '%s' failed: %s", p, strerror(errno));
    close(fd);
    return rc;
}

static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    // sec2 so that the VFD handle is an int fd (used for the end-of-file check when reading);
    // strong close so H5Fclose really closes the file even if an object id leaked.
    H5Pset_fapl_sec2(fapl);
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    // Take the lock, but do not fail on filesystems that do not support it.
    H5Pset_file_locking(fapl, 1, 1);
    return fapl;
}

int ckpt_writer_open(ckpt_writer **out, const char *path) {
    h5_init();
    ASSERT(out && path);
    *out = NULL;
    size_t n = strlen(path);
    char *tmp = xmalloc(n + 5);
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    // Probe with open(2) first: HDF5 would only say "unable to open file"; errno says why.
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        char *dir = dir_of(path);
        int rc = err_set(ERR_IO, "ckpt: cannot create '%s' in directory '%s': %s", tmp, dir,
                         strerror(e));
        free(dir);
        free(tmp);
        return rc;
    }
    close(fd);

    hid_t fapl = make_fapl();
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    h5_detail why;
    if (f < 0) h5_why(&why);
    H5Pclose(fapl);
    if (f < 0) {
        int rc = err_set(ERR_IO, "ckpt: cannot create HDF5 file '%s': %s", tmp, why.s);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    ckpt_writer *w = xcalloc(1, sizeof *w);
    w->file = f;
    w->lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(w->lcpl, 1);
    // Contiguous (the default, stated for clarity) and no fill: H5Dwrite of the whole dataset
    // then goes straight from the caller's buffer to pwrite, with no conversion or chunk cache.
    w->dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(w->dcpl, H5D_CONTIGUOUS);
    H5Pset_fill_time(w->dcpl, H5D_FILL_TIME_NEVER);
    w->path = xstrdup(path);
    w->tmp = tmp;
    *out = w;
    return ERR_OK;
}

int ckpt_write_tensor(ckpt_writer *w, const char *name, const float *data, int ndim,
                      const size_t *shape) {
    h5_init();
    ASSERT(w && name && shape && ndim >= 1 && ndim <= CKPT_MAX_DIMS);
    hsize_t dims[CKPT_MAX_DIMS];
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = shape[i];
        count *= shape[i];
    }
    ASSERT(data || count == 0);
    h5_detail why;
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t d = H5Dcreate2(w->file, name, H5T_IEEE_F32LE, space, w->lcpl, w->dcpl, H5P_DEFAULT);
    if (d < 0) h5_why(&why);
    H5Sclose(space);
    if (d < 0)
        return err_set(ERR_IO, "ckpt: cannot create dataset '%s' in '%s': %s", name, w->tmp, why.s);
    // Little-endian float in memory and file: no conversion, the bits go through unchanged.
    herr_t st = count ? H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0;
    if (st < 0) h5_why(&why);
    herr_t cst = H5Dclose(d);
    if (st >= 0 && cst < 0) h5_why(&why);
    if (st < 0 || cst < 0)
        return err_set(ERR_IO, "ckpt: cannot write dataset '%s' (%zu floats) to '%s': %s", name,
                       count, w->tmp, why.s);
    return ERR_OK;
}

// write_attr replaces root attribute name with one of file type ftype over space.
static int write_attr(ckpt_writer *w, const char *name, hid_t ftype, hid_t mtype, hid_t space,
                      const void *buf) {
    ASSERT(w && name);
    h5_detail why;
    if (H5Aexists(w->file, name) > 0 && H5Adelete(w->file, name) < 0)
        return err_set(ERR_IO, "ckpt: cannot replace attribute '%s' in '%s': %s", name, w->tmp,
                       h5_why(&why));
    hid_t a = H5Acreate2(w->file, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0)
        return err_set(ERR_IO, "ckpt: cannot create attribute '%s' in '%s': %s", name, w->tmp,
                       h5_why(&why));
    herr_t st = H5Sget_simple_extent_npoints(space) > 0 ? H5Awrite(a, mtype, buf) : 0;
    if (st < 0) h5_why(&why);
    herr_t cst = H5Aclose(a);
    if (st >= 0 && cst < 0) h5_why(&why);
    if (st < 0 || cst < 0)
        return err_set(ERR_IO, "ckpt: cannot write attribute '%s' to '%s': %s", name, w->tmp,
                       why.s);
    return ERR_OK;
}

int ckpt_write_attr_i64(ckpt_writer *w, const char *name, int64_t v) {
    h5_init();
    hid_t space = H5Screate(H5S_SCALAR);
    int rc = write_attr(w, name, H5T_STD_I64LE, H5T_NATIVE_INT64, space, &v);
    H5Sclose(space);
    return rc;
}

int ckpt_write_attr_f64(ckpt_writer *w, const char *name, double v) {
    h5_init();
    hid_t space = H5Screate(H5S_SCALAR);
    int rc = write_attr(w, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, space, &v);
    H5Sclose(space);
    return rc;
}

// Variable-length UTF-8 string: h5py reads it back as a Python str, and any length fits (the
// text lives in the global heap, so the 64 KiB object-header limit of the oldest file format,
// which we keep for compatibility, does not apply).
static hid_t vlen_str_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

int ckpt_write_attr_str(ckpt_writer *w, const char *name, const char *v) {
    h5_init();
    ASSERT(v);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t t = vlen_str_type();
    int rc = write_attr(w, name, t, t, space, &v);
    H5Tclose(t);
    H5Sclose(space);
    return rc;
}

int ckpt_write_attr_u64s(ckpt_writer *w, const char *name, const uint64_t *v, size_t n) {
    h5_init();
    ASSERT(v || n == 0);
    hsize_t dim = n;
    // An empty array has a null dataspace (h5py shows h5py.Empty); a zero-length simple one
    // is not portable to older readers.
    hid_t space = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_NULL);
    int rc = write_attr(w, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, space, v);
    H5Sclose(space);
    return rc;
}

static void writer_free(ckpt_writer *w) {
    H5Pclose(w->lcpl);
    H5Pclose(w->dcpl);
    free(w->path);
    free(w->tmp);
    free(w);
}

int ckpt_writer_commit(ckpt_writer *w) {
    h5_init();
    ASSERT(w);
    int rc = ERR_OK;
    h5_detail why;
    if (H5Fclose(w->file) < 0)
        rc = err_set(ERR_IO, "ckpt: cannot close '%s': %s", w->tmp, h5_why(&why));
    // The data must be on disk before the rename makes it visible under the final name.
    if (rc == ERR_OK) rc = fsync_file(w->tmp);
    if (rc == ERR_OK && rename(w->tmp, w->path) != 0)
        rc = err_set(ERR_IO, "ckpt: cannot rename '%s' to '%s': %s", w->tmp, w->path,
                     strerror(errno));
    if (rc == ERR_OK) {
        // Make the rename itself durable. On failure the new file is already at w->path.
        rc = sys_fsync_parent(w->path);
    } else {
        unlink(w->tmp);
    }
    writer_free(w);
    return rc;
}

void ckpt_writer_abort(ckpt_writer *w) {
    h5_init();
    if (!w) return;
    H5Fclose(w->file);
    unlink(w->tmp);
    writer_free(w);
}

int ckpt_reader_open(ckpt_reader **out, const char *path) {
    h5_init();
    ASSERT(out && path);
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(ERR_IO, "ckpt: cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    int is_dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    close(fd);
    if (is_dir) return err_set(ERR_IO, "ckpt: cannot open '%s': is a directory", path);
    h5_detail why;
    htri_t is = H5Fis_hdf5(path);
    if (is == 0) return err_set(ERR_FORMAT, "ckpt: '%s' is not an HDF5 file (no signature)", path);
    if (is < 0)
        return err_set(ERR_FORMAT, "ckpt: '%s' is not a readable HDF5 file: %s", path,
                       h5_why(&why));
    hid_t fapl = make_fapl();
    // HDF5 compares the end-of-file address in the superblock with the real size, so a
    // truncated checkpoint fails here.
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (f < 0) h5_why(&why);
    H5Pclose(fapl);
    if (f < 0)
        return err_set(ERR_FORMAT, "ckpt: cannot open '%s' (corrupt or truncated HDF5): %s", path,
                       why.s);
    ckpt_reader *r = xcalloc(1, sizeof *r);
    r->file = f;
    r->path = xstrdup(path);
    *out = r;
    return ERR_OK;
}

// link_exists checks every prefix of name: H5Lexists fails, rather than returning 0, when an
// intermediate group is missing.
static int link_exists(hid_t f, const char *name) {
    size_t n = strlen(name);
    if (n == 0) return 0;
    char *p = xstrdup(name);
    int ok = 1;
    for (size_t i = 1; i <= n && ok; i++) {
        if (i < n && p[i] != '/') continue;
        char c = p[i];
        p[i] = 0;
        ok = H5Lexists(f, p, H5P_DEFAULT) > 0;
        p[i] = c;
    }
    free(p);
    return ok;
}

// open_dataset opens name or returns ERR_FORMAT if it is missing or not a dataset.
static int open_dataset(ckpt_reader *r, const char *name, hid_t *out) {
    *out = H5I_INVALID_HID;
    if (!link_exists(r->file, name))
        return err_set(ERR_FORMAT, "ckpt: '%s' has no dataset '%s'", r->path, name);
    h5_detail why;
    hid_t o = H5Oopen(r->file, name, H5P_DEFAULT);
    if (o < 0)
        return err_set(ERR_FORMAT, "ckpt: cannot open '%s' in '%s': %s", name, r->path,
                       h5_why(&why));
    if (H5Iget_type(o) != H5I_DATASET) {
        H5Oclose(o);
        return err_set(ERR_FORMAT, "ckpt: '%s' in '%s' is not a dataset", name, r->path);
    }
    *out = o;
    return ERR_OK;
}

int ckpt_has(ckpt_reader *r, const char *name) {
    h5_init();
    ASSERT(r && name);
    if (!link_exists(r->file, name)) return 0;
    hid_t o = H5Oopen(r->file, name, H5P_DEFAULT);
    if (o < 0) return 0;
    int is = H5Iget_type(o) == H5I_DATASET;
    H5Oclose(o);
    return is;
}

// fmt_shape writes "(768, 2304)" into buf.
static const char *fmt_shape(char *buf, size_t cap, int ndim, const hsize_t *dims) {
    size_t k = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%llu", i ? ", " : "",
                              (unsigned long long)dims[i]);
    if (k < cap) snprintf(buf + k, cap - k, ")");
    return buf;
}

// check_in_file refuses a contiguous dataset whose bytes lie past the current end of the file
// (truncated after opening, or corrupt metadata): the sec2 driver would silently read zeros.
static int check_in_file(ckpt_reader *r, hid_t d, const char *name) {
    haddr_t off = H5Dget_offset(d);
    if (off == HADDR_UNDEF) return ERR_OK; // chunked, compact or never written
    hsize_t bytes = H5Dget_storage_size(d);
    int *fdp = NULL;
    struct stat st;
    if (H5Fget_vfd_handle(r->file, H5P_DEFAULT, (void **)&fdp) < 0 || !fdp || fstat(*fdp, &st) != 0)
        return ERR_OK; // cannot tell; H5Dread still checks against the stored end of file
    if ((unsigned long long)off + bytes > (unsigned long long)st.st_size)
        return err_set(ERR_FORMAT,
                       "ckpt: dataset '%s' in '%s' ends at byte %llu but the file has %lld "
                       "(truncated?)",
                       name, r->path, (unsigned long long)off + bytes, (long long)st.st_size);
    return ERR_OK;
}

int ckpt_read_tensor(ckpt_reader *r, const char *name, float *data, int ndim, const size_t *shape) {
    h5_init();
    ASSERT(r && name && shape && ndim >= 1 && ndim <= CKPT_MAX_DIMS);
    hid_t d;
    int rc = open_dataset(r, name, &d);
    if (rc != ERR_OK) return rc;
    hsize_t want[CKPT_MAX_DIMS], have[H5S_MAX_RANK];
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        want[i] = shape[i];
        count *= shape[i];
    }
    ASSERT(data || count == 0);
    hid_t space = H5Dget_space(d);
    int sn = H5Sget_simple_extent_ndims(space);
    if (sn < 0) sn = 0;
    H5Sget_simple_extent_dims(space, have, NULL);
    H5Sclose(space);
    int same = sn == ndim;
    for (int i = 0; i < ndim && same; i++)
        same = have[i] == want[i];
    hid_t t = H5Dget_type(d);
    H5T_class_t cls = H5Tget_class(t);
    size_t width = H5Tget_size(t);
    H5Tclose(t);
    char s1[128], s2[128];
    h5_detail why;
    if (!same) {
        rc = err_set(ERR_FORMAT, "ckpt: dataset '%s' in '%s' has shape %s, expected %s", name,
                     r->path, fmt_shape(s1, sizeof s1, sn, have),
                     fmt_shape(s2, sizeof s2, ndim, want));
    } else if (cls != H5T_FLOAT) {
        // Other float widths are converted by HDF5; integers or strings are not weights.
        rc = err_set(ERR_FORMAT, "ckpt: dataset '%s' in '%s' is not floating point", name, r->path);
    } else if (width != 2 && width != 4 && width != 8) {
        // A corrupt width (found by tests/fuzz/fuzz_ckpt: 4294967292 bytes) would have H5Dread
        // allocate a conversion buffer of count times that.
        rc = err_set(ERR_FORMAT,
                     "ckpt: dataset '%s' in '%s' holds floats of %zu bytes (want 2, 4 or 8)", name,
                     r->path, width);
    } else {
        rc = check_in_file(r, d, name);
        if (rc == ERR_OK && count &&
            H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
            rc = err_set(ERR_IO, "ckpt: cannot read dataset '%s' from '%s': %s", name, r->path,
                         h5_why(&why));
    }
    H5Dclose(d);
    return rc;
}

// file_size returns the bytes of r's file now (0 if it cannot be told).
static size_t file_size(ckpt_reader *r) {
    struct stat st;
    return stat(r->path, &st) == 0 ? (size_t)st.st_size : 0;
}

enum { KIND_I64, KIND_F64, KIND_STR, KIND_U64S };

static const char *kind_name(int kind) {
    static const char *names[] = {"int64", "float64", "string", "uint64 array"};
    return names[kind];
}

// open_attr opens root attribute name and checks its type class (and sign) and element
// count; returns ERR_FORMAT naming the attribute if it is missing or of another kind.
static int open_attr(ckpt_reader *r, const char *name, int kind, size_t n, hid_t *out) {
    ASSERT(r && name);
    *out = H5I_INVALID_HID;
    h5_detail why;
    if (H5Aexists(r->file, name) <= 0)
        return err_set(ERR_FORMAT, "ckpt: '%s' has no attribute '%s'", r->path, name);
    hid_t a = H5Aopen(r->file, name, H5P_DEFAULT);
    if (a < 0)
        return err_set(ERR_FORMAT, "ckpt: cannot open attribute '%s' in '%s': %s", name, r->path,
                       h5_why(&why));
    hid_t t = H5Aget_type(a), space = H5Aget_space(a);
    H5T_class_t cls = H5Tget_class(t);
    H5T_sign_t sign = cls == H5T_INTEGER ? H5Tget_sign(t) : H5T_SGN_ERROR;
    hssize_t np = H5Sget_simple_extent_npoints(space);
    // A number wider than 8 bytes is corrupt, and H5Aread would convert (allocate) it.
    int narrow = H5Tget_size(t) <= 8;
    H5Tclose(t);
    H5Sclose(space);
    int ok;
    switch (kind) {
    case KIND_I64: ok = cls == H5T_INTEGER && sign == H5T_SGN_2 && narrow; break;
    case KIND_F64: ok = cls == H5T_FLOAT && narrow; break;
    case KIND_STR: ok = cls == H5T_STRING; break;
    default: ok = cls == H5T_INTEGER && sign == H5T_SGN_NONE && narrow; break;
    }
    if (!ok) {
        H5Aclose(a);
        return err_set(ERR_FORMAT, "ckpt: attribute '%s' in '%s' is not of type %s", name, r->path,
                       kind_name(kind));
    }
    if (np != (hssize_t)n) {
        H5Aclose(a);
        return err_set(ERR_FORMAT, "ckpt: attribute '%s' in '%s' has %lld values, expected %zu",
                       name, r->path, (long long)np, n);
    }
    *out = a;
    return ERR_OK;
}

static int read_attr_close(ckpt_reader *r, const char *name, hid_t a, hid_t mtype, void *buf) {
    h5_detail why;
    int rc = ERR_OK;
    if (H5Aread(a, mtype, buf) < 0)
        rc = err_set(ERR_FORMAT, "ckpt: cannot read attribute '%s' from '%s': %s", name, r->path,
                     h5_why(&why));
    H5Aclose(a);
    return rc;
}

int ckpt_read_attr_i64(ckpt_reader *r, const char *name, int64_t *v) {
    h5_init();
    hid_t a;
    int rc = open_attr(r, name, KIND_I64, 1, &a);
    return rc ? rc : read_attr_close(r, name, a, H5T_NATIVE_INT64, v);
}

int ckpt_read_attr_f64(ckpt_reader *r, const char *name, double *v) {
    h5_init();
    hid_t a;
    int rc = open_attr(r, name, KIND_F64, 1, &a);
    return rc ? rc : read_attr_close(r, name, a, H5T_NATIVE_DOUBLE, v);
}

int ckpt_read_attr_str(ckpt_reader *r, const char *name, char **v) {
    h5_init();
    ASSERT(v);
    *v = NULL;
    hid_t a;
    int rc = open_attr(r, name, KIND_STR, 1, &a);
    if (rc != ERR_OK) return rc;
    hid_t ft = H5Aget_type(a);
    if (H5Tis_variable_str(ft) > 0) {
        // Ours, and h5py's str: HDF5 allocates the string, we copy it and hand it back.
        hid_t mt = vlen_str_type();
        char *s = NULL;
        rc = read_attr_close(r, name, a, mt, &s);
        H5Tclose(mt);
        if (rc == ERR_OK) *v = xstrdup(s ? s : "");
        H5free_memory(s);
    } else if (H5Tget_size(ft) > file_size(r)) {
        // A corrupt size would have us allocate it: the bytes must be in the file.
        rc =
            err_set(ERR_FORMAT,
                    "ckpt: attribute '%s' in '%s' is a string of %zu bytes, more than the file has",
                    name, r->path, H5Tget_size(ft));
        H5Aclose(a);
    } else {
        // Fixed length (h5py bytes, np.bytes_): read the padded bytes and terminate them.
        size_t n = H5Tget_size(ft);
        char *s = xcalloc(n + 1, 1);
        hid_t mt = H5Tcopy(ft);
        rc = read_attr_close(r, name, a, mt, s);
        H5Tclose(mt);
        if (rc == ERR_OK)
            *v = s;
        else
            free(s);
    }
    H5Tclose(ft);
    return rc;
}

int ckpt_read_attr_u64s(ckpt_reader *r, const char *name, uint64_t *v, size_t n) {
    h5_init();
    ASSERT(v || n == 0);
    hid_t a;
    int rc = open_attr(r, name, KIND_U64S, n, &a);
    if (rc != ERR_OK) return rc;
    if (n == 0) {
        H5Aclose(a);
        return ERR_OK;
    }
    return read_attr_close(r, name, a, H5T_NATIVE_UINT64, v);
}

void ckpt_reader_close(ckpt_reader *r) {
    h5_init();
    if (!r) return;
    H5Fclose(r->file);
    free(r->path);
    free(r);
}
