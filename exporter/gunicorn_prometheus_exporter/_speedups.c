/* The request path in C: an optional accelerator of recorder.py, workers/wsgi_hooks.py,
 * workers/body.py and workers/asgi_metrics.py.
 *
 * The Python code stays the reference: speedups.py loads this module when it was built and
 * not switched off, and tests/test_speedups.py checks that both write the same bytes and
 * report the same values. Why C: in CPython each Python-level call, memoryview store or
 * bisect costs 300 to 1,000 machine instructions, which made the plugin's share of a raw
 * ASGI hello world 8% (docs/benchmarks.md); the same steps here cost tens.
 *
 * The GIL is held throughout (nothing here releases it), so a series is written by one
 * thread at a time without a lock of its own: gthread workers need none for ``add``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <unistd.h>

/* -- shared helpers -------------------------------------------------------------------- */

/* First index whose bound is not below ``x``, as bisect.bisect_left (NaN: 0). */
static Py_ssize_t
bisect_left(const double *bounds, Py_ssize_t count, double x)
{
    Py_ssize_t lo = 0, hi = count;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (bounds[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A writable, native-double view of a mapped file, as MmapFile.values is. A released view
 * (a closed file) raises ValueError as it does in Python, instead of writing to memory that
 * is gone. A memoryview, which is what the storage hands out, is read in place: its buffer
 * stays valid until it is released, and nothing between this and the store can release it
 * (no Python code runs, the GIL is held), so no export is taken (an acquisition and its
 * release are about 150 instructions, and an ASGI request made five): only ``buf`` and
 * ``len``, what the stores read, are set, and ``buffer->obj`` is NULL, which
 * release_values passes over. Any other object goes through the buffer protocol. */
static int
get_values(PyObject *view, Py_buffer *buffer)
{
    if (PyMemoryView_Check(view)) {
        PyMemoryViewObject *memory = (PyMemoryViewObject *)view;
        if ((memory->flags & _Py_MEMORYVIEW_RELEASED)
                || (memory->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED)) {
            PyErr_SetString(PyExc_ValueError,
                            "operation forbidden on released memoryview object");
            return -1;
        }
        Py_buffer *own = &memory->view;
        if (!own->readonly && own->ndim == 1 && own->itemsize == (Py_ssize_t)sizeof(double)
                && (own->strides == NULL || own->strides[0] == own->itemsize)
                && own->format != NULL && strcmp(own->format, "d") == 0) {
            buffer->buf = own->buf;
            buffer->len = own->len;
            buffer->obj = NULL;
            return 0;
        }
    }
    if (PyObject_GetBuffer(view, buffer, PyBUF_CONTIG | PyBUF_FORMAT) < 0)
        return -1;
    if (buffer->itemsize != (Py_ssize_t)sizeof(double) || buffer->format == NULL
            || strcmp(buffer->format, "d") != 0) {
        PyBuffer_Release(buffer);
        PyErr_SetString(PyExc_TypeError, "a series view must be a memoryview of format 'd'");
        return -1;
    }
    return 0;
}

/* The end of get_values: an export taken is released (a view read in place took none). */
static inline void
release_values(Py_buffer *values)
{
    if (values->obj != NULL)
        PyBuffer_Release(values);
}

/* ``values[i] += amount`` with Python's bounds check. */
static int
add_at_index(Py_buffer *values, Py_ssize_t i, double amount)
{
    if (i < 0 || i >= values->len / (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_IndexError, "index outside its mapped file");
        return -1;
    }
    ((double *)values->buf)[i] += amount;
    return 0;
}

/* add_at_index with the index an int object (a series position). */
static int
add_at(Py_buffer *values, PyObject *index, double amount)
{
    Py_ssize_t i = PyLong_AsSsize_t(index);
    if (i == -1 && PyErr_Occurred())
        return -1;
    return add_at_index(values, i, amount);
}

/* The bucket of ``x`` among ``bounds``: an element of the ``buckets`` tuple (bucket
 * positions, +Inf last). */
static PyObject *
bucket(PyObject *buckets, const double *bounds, Py_ssize_t count, double x)
{
    Py_ssize_t i = bisect_left(bounds, count, x);
    if (!PyTuple_Check(buckets) || i >= PyTuple_GET_SIZE(buckets)) {
        PyErr_SetString(PyExc_IndexError, "series bucket positions do not match the bounds");
        return NULL;
    }
    return PyTuple_GET_ITEM(buckets, i);
}

/* -- RequestWriter: Recorder.add ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    double *duration_bounds;
    Py_ssize_t duration_count;
    double *size_bounds;
    Py_ssize_t size_count;
    /* the native duration histogram (storage/native.py's Layout), native_count 0 when off:
     * mantissa bounds, zero threshold, the value above which the top bucket counts, the
     * lowest index and the number of buckets */
    double *native_bounds;
    Py_ssize_t native_count;
    double zero_threshold, top;
    long lo;
    Py_ssize_t buckets;
} RequestWriter;

static int
read_bounds(PyObject *sequence, const char *name, double **bounds, Py_ssize_t *count)
{
    PyObject *fast = PySequence_Fast(sequence, name);
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    double *out = PyMem_New(double, n ? n : 1);
    if (out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1.0 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    *bounds = out;
    *count = n;
    return 0;
}

/* native=(zero_threshold, top, mantissa_bounds, lo, hi), or None */
static int
read_native(RequestWriter *self, PyObject *native)
{
    self->native_count = 0;
    if (native == Py_None)
        return 0;
    PyObject *bounds;
    long hi;
    if (!PyArg_ParseTuple(native, "ddOll:native layout", &self->zero_threshold, &self->top,
                          &bounds, &self->lo, &hi))
        return -1;
    if (read_bounds(bounds, "native bounds must be a sequence of numbers",
                    &self->native_bounds, &self->native_count) < 0)
        return -1;
    if (self->native_count < 1 || hi < self->lo) {
        self->native_count = 0;  /* no native layout, as before the call */
        PyErr_SetString(PyExc_ValueError, "native layout: no bounds or hi below lo");
        return -1;
    }
    self->buckets = hi - self->lo + 1;
    return 0;
}

static int
RequestWriter_init(RequestWriter *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"duration_bounds", "size_bounds", "native", NULL};
    PyObject *durations, *sizes, *native = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:RequestWriter", keywords,
                                     &durations, &sizes, &native))
        return -1;
    PyMem_Free(self->duration_bounds);
    PyMem_Free(self->size_bounds);
    PyMem_Free(self->native_bounds);
    /* counts with their arrays: an __init__ called again that fails leaves a writer with no
     * bounds, never a count over a freed array */
    self->duration_bounds = self->size_bounds = self->native_bounds = NULL;
    self->duration_count = self->size_count = self->native_count = 0;
    if (read_bounds(durations, "duration_bounds must be a sequence of numbers",
                    &self->duration_bounds, &self->duration_count) < 0)
        return -1;
    if (read_bounds(sizes, "size_bounds must be a sequence of numbers",
                    &self->size_bounds, &self->size_count) < 0)
        return -1;
    return read_native(self, native);
}

static void
RequestWriter_dealloc(RequestWriter *self)
{
    PyMem_Free(self->duration_bounds);
    PyMem_Free(self->size_bounds);
    PyMem_Free(self->native_bounds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Offset of a duration's count among a series' native doubles: Layout.slot. */
static Py_ssize_t
native_slot(RequestWriter *self, double duration)
{
    if (!(duration > self->zero_threshold))  /* zero, negative, NaN */
        return 0;
    if (duration > self->top)
        return self->buckets;
    int exp;
    double frac = frexp(duration, &exp);
    return bisect_left(self->native_bounds, self->native_count, frac)
           + (Py_ssize_t)(exp - 1) * self->native_count - self->lo + 1;
}

/* The native store of one request, when the series has a native view. */
static int
add_native(RequestWriter *self, PyObject *view, PyObject *zero, double duration)
{
    if (view == Py_None)
        return 0;
    if (self->native_count == 0) {
        PyErr_SetString(PyExc_ValueError, "a native series, but no native layout");
        return -1;
    }
    Py_ssize_t base = PyLong_AsSsize_t(zero);
    if (base == -1 && PyErr_Occurred())
        return -1;
    Py_buffer nh;
    if (get_values(view, &nh) < 0)
        return -1;
    int failed = add_at_index(&nh, base + native_slot(self, duration), 1.0);
    release_values(&nh);
    return failed;
}

/* One size histogram: its bucket and, for a non-empty body, its sum. */
static int
add_size(RequestWriter *self, Py_buffer *h, PyObject *buckets, PyObject *sum, double size)
{
    PyObject *position = bucket(buckets, self->size_bounds, self->size_count, size);
    if (position == NULL || add_at(h, position, 1.0) < 0)
        return -1;
    return size != 0.0 ? add_at(h, sum, size) : 0;
}

/* A size as Recorder.add takes it: an int, a float, or None (unknown: no body counted). */
static double
as_size(PyObject *value)
{
    if (value == Py_None)
        return 0.0;
    return PyLong_Check(value) ? PyLong_AsDouble(value) : PyFloat_AsDouble(value);
}

/* The stores of one finished request into ``series``: what Recorder.add does. 0, or -1
 * with an exception set. */
static int
write_request(RequestWriter *self, PyObject *series, double duration, double received,
              double sent)
{
    if (!PyTuple_Check(series) || PyTuple_GET_SIZE(series) != 11) {
        PyErr_SetString(PyExc_TypeError, "series must be the 11-tuple Recorder.series() gives");
        return -1;
    }
    PyObject **item = &PyTuple_GET_ITEM(series, 0);
    Py_buffer counters, h;
    if (get_values(item[0], &counters) < 0)
        return -1;
    if (get_values(item[2], &h) < 0) {
        release_values(&counters);
        return -1;
    }
    int failed = add_at(&counters, item[1], 1.0) < 0;
    if (!failed) {
        PyObject *position = bucket(item[3], self->duration_bounds, self->duration_count,
                                    duration);
        failed = position == NULL || add_at(&h, position, 1.0) < 0
                 || add_at(&h, item[4], duration) < 0
                 || add_size(self, &h, item[5], item[6], received) < 0
                 || add_size(self, &h, item[7], item[8], sent) < 0
                 || add_native(self, item[9], item[10], duration) < 0;
    }
    release_values(&h);
    release_values(&counters);
    return failed ? -1 : 0;
}

/* add(series, duration, request_bytes, response_bytes): what Recorder.add does. */
static PyObject *
RequestWriter_add(RequestWriter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "add() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *series = args[0];
    if (!PyTuple_Check(series) || PyTuple_GET_SIZE(series) != 11) {
        PyErr_SetString(PyExc_TypeError, "series must be the 11-tuple Recorder.series() gives");
        return NULL;
    }
    double duration = PyFloat_AsDouble(args[1]);
    if (duration == -1.0 && PyErr_Occurred())
        return NULL;
    double received = as_size(args[2]);
    if (received == -1.0 && PyErr_Occurred())
        return NULL;
    double sent = as_size(args[3]);
    if (sent == -1.0 && PyErr_Occurred())
        return NULL;
    if (write_request(self, series, duration, received, sent) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef RequestWriter_methods[] = {
    {"add", (PyCFunction)(void (*)(void))RequestWriter_add, METH_FASTCALL,
     "add(series, duration, request_bytes, response_bytes): one finished request."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RequestWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.RequestWriter",
    .tp_basicsize = sizeof(RequestWriter),
    .tp_dealloc = (destructor)RequestWriter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RequestWriter(duration_bounds, size_bounds, native=None): Recorder.add in C.",
    .tp_methods = RequestWriter_methods,
    .tp_init = (initproc)RequestWriter_init,
    .tp_new = PyType_GenericNew,
};

/* -- the WSGI hooks: workers/wsgi_hooks.py's WSGIRequestHooks ------------------------------
 *
 * WSGIHooks(...) gives gunicorn's pre_request and post_request as C methods: the start time
 * (on the request object, as in Python), the in-flight gauge, and the common finished
 * request recorded without a Python frame: no exception, none of the plugin's own environ
 * keys (a framework's error, a metered body, sendfile bytes), its series already known, no
 * extra (another protocol, a queue stamp, a trace). Every other request goes to
 * WSGIRequestHooks.finish, so the policy lives in Python; the key layouts and environ keys
 * are handed over by Python, never re-derived here. Nothing raises into gunicorn: a failure
 * goes to WSGIRequestHooks.failed, which logs the first.
 */

static int now(double *out);
static int add_to_gauge(PyObject *gauges, Py_ssize_t index, double delta);
static PyObject *s_request_method, *s_path_info, *s_content_length, *s_server_protocol;
static PyObject *s_status_code, *s_sent, *s_nr, *s_max_requests;

typedef struct {
    PyObject_HEAD
    PyObject *started_attr; /* the request attribute holding its start time */
    PyObject *gauges;       /* the in-flight gauge: view and index */
    Py_ssize_t gauge_index;
    PyObject *resolved;     /* RequestLabeller.resolved: request key -> series */
    PyObject *add;          /* Recorder.add */
    PyObject *own_keys;     /* environ keys that leave a request to finish() */
    PyObject *route_key;    /* a framework's matched route template */
    int by_path[3];         /* the key layouts of ``resolved``: positions in */
    int by_template[3];     /* (method, path, status, template) */
    PyObject *extras;       /* RequestExtras.wsgi */
    PyObject *extra_keys;   /* environ keys whose presence means the extras have work */
    PyObject *usual;        /* the usual SERVER_PROTOCOL: any other goes to the extras */
    PyObject *finish;       /* WSGIRequestHooks.finish(environ, resp, duration, ended) */
    PyObject *failed;       /* WSGIRequestHooks.failed(exception) */
    PyObject *max_reached;  /* called when the worker reached max_requests */
} WSGIHooks;

static int parse_layout(PyObject *positions, int absent, int out[3]);

/* A failure to record: handed to failed(), never raised into gunicorn. */
static void
hooks_failed(WSGIHooks *self)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *done = value == NULL ? NULL : PyObject_CallOneArg(self->failed, value);
    if (done == NULL)
        PyErr_WriteUnraisable(self->failed);
    Py_XDECREF(done);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

/* Whether an exception is being handled: post_request runs in the finally of one. */
static int
handling_exception(void)
{
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *exc = PyErr_GetHandledException();
    int handling = exc != NULL && exc != Py_None;
    Py_XDECREF(exc);
#else
    PyObject *type, *exc, *traceback;
    PyErr_GetExcInfo(&type, &exc, &traceback);
    int handling = exc != NULL && exc != Py_None;
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(traceback);
#endif
    return handling;
}

/* environ.get(key) of a dict: borrowed, NULL when absent (error set on failure only). */
#define ENVIRON_GET(environ, key) PyDict_GetItemWithError((environ), (key))

/* The request body's size as WSGIRequestHooks._record reads it: CONTENT_LENGTH when it is
 * a number, else 0 (a body metered in Python is an own key: finish() reads it). NULL
 * without an error: not a plain str, finish() decides. */
static PyObject *
received_bytes(PyObject *environ)
{
    PyObject *length = ENVIRON_GET(environ, s_content_length);
    if (length == NULL)
        return PyErr_Occurred() ? NULL : PyLong_FromLong(0);
    if (!PyUnicode_CheckExact(length))
        return NULL;
    if (PyUnicode_GET_LENGTH(length) == 0)
        return PyLong_FromLong(0);
    PyObject *received = PyLong_FromUnicodeObject(length, 10);
    if (received == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        return PyLong_FromLong(0);  /* int() refused it: as _record */
    }
    if (received == NULL)
        return NULL;
    int overflow;
    (void)PyLong_AsLongLongAndOverflow(received, &overflow);
    if (overflow > 0) {  /* above LARGEST_BODY (LLONG_MAX): no request's size, as _record */
        Py_DECREF(received);
        return PyLong_FromLong(0);
    }
    return received;
}

/* The extras have work when the protocol is not the usual one or a key they read is
 * present (RequestExtras.wsgi then decides). 1: call them, 0: not, -1: an error. */
static int
extras_wanted(WSGIHooks *self, PyObject *environ)
{
    PyObject *protocol = ENVIRON_GET(environ, s_server_protocol);
    if (protocol == NULL && PyErr_Occurred())
        return -1;
    if (protocol != NULL && protocol != Py_None && protocol != self->usual) {
        int usual = PyObject_RichCompareBool(protocol, self->usual, Py_EQ);
        if (usual <= 0)
            return usual < 0 ? -1 : 1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->extra_keys); i++) {
        int present = PyDict_Contains(environ, PyTuple_GET_ITEM(self->extra_keys, i));
        if (present != 0)
            return present;
    }
    return 0;
}

/* The common finished request, as WSGIRequestHooks._record and RequestLabeller.record
 * record it (``ended``: its end, perf_counter, for the extras). 1: recorded; 0: not this
 * kind, finish() takes it; -1: an error. */
static int
record_known_wsgi(WSGIHooks *self, PyObject *environ, PyObject *resp, PyObject *duration,
                  double ended)
{
    if (!PyDict_CheckExact(environ) || resp == Py_None || handling_exception())
        return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->own_keys); i++) {
        int present = PyDict_Contains(environ, PyTuple_GET_ITEM(self->own_keys, i));
        if (present != 0)
            return present < 0 ? -1 : 0;
    }
    /* the response's status first: the environ's values are borrowed from here to the
     * key, where no code of the application's objects may run */
    PyObject *code = PyObject_GetAttr(resp, s_status_code);
    if (code == NULL) {  /* start_response did not run */
        PyErr_Clear();
        return 0;
    }
    PyObject *fields[4] = {NULL, NULL, code, NULL};
    const int *layout = self->by_path;
    PyObject *template = ENVIRON_GET(environ, self->route_key);
    if (template != NULL && template != Py_None
            && !(PyUnicode_Check(template) && PyUnicode_GET_LENGTH(template) == 0)) {
        if (!PyUnicode_CheckExact(template)) {
            Py_DECREF(code);
            return 0;  /* an app's own object: record() makes it a str */
        }
        fields[3] = template;
        layout = self->by_template;
    }
    for (int i = 0; i < 2 && !PyErr_Occurred(); i++) {  /* environ.get(): None when absent */
        fields[i] = ENVIRON_GET(environ, i == 0 ? s_request_method : s_path_info);
        if (fields[i] == NULL)
            fields[i] = Py_None;
    }
    PyObject *key = PyErr_Occurred() ? NULL
        : PyTuple_Pack(3, fields[layout[0]], fields[layout[1]], fields[layout[2]]);
    Py_DECREF(code);
    if (key == NULL)
        return -1;
    PyObject *series = PyDict_GetItemWithError(self->resolved, key);
    Py_XINCREF(series);  /* resolved may change under what runs below (the extras record) */
    Py_DECREF(key);
    if (series == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *sent = PyObject_GetAttr(resp, s_sent);
    PyObject *received = sent == NULL ? NULL : received_bytes(environ);
    if (received == NULL) {
        Py_XDECREF(sent);
        Py_DECREF(series);
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *args[] = {series, duration, received, sent};
    PyObject *done = PyObject_Vectorcall(self->add, args, 4, NULL);
    Py_DECREF(received);
    Py_DECREF(sent);
    int wanted = done == NULL ? -1 : extras_wanted(self, environ);
    Py_XDECREF(done);
    if (wanted == 1) {
        PyObject *end = PyFloat_FromDouble(ended);  /* only a request with extras pays */
        PyObject *extra_args[] = {environ, series, duration, end};
        done = end == NULL ? NULL : PyObject_Vectorcall(self->extras, extra_args, 4, NULL);
        Py_XDECREF(end);
        Py_XDECREF(done);
        wanted = done == NULL ? -1 : 0;
    }
    Py_DECREF(series);
    return wanted < 0 ? -1 : 1;
}

/* pre_request(worker, req): the start time rides on the request; one more in flight. */
static PyObject *
WSGIHooks_pre_request(WSGIHooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "pre_request() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    double started;
    PyObject *stamp = NULL;
    if (now(&started) < 0 || (stamp = PyFloat_FromDouble(started)) == NULL
            || PyObject_SetAttr(args[1], self->started_attr, stamp) < 0
            || add_to_gauge(self->gauges, self->gauge_index, 1.0) < 0)
        hooks_failed(self);
    Py_XDECREF(stamp);
    Py_RETURN_NONE;
}

/* Whether ``worker`` served its max_requests: its exit intent says so. */
static int
check_max_requests(WSGIHooks *self, PyObject *worker)
{
    PyObject *nr = PyObject_GetAttr(worker, s_nr);
    PyObject *most = nr == NULL ? NULL : PyObject_GetAttr(worker, s_max_requests);
    int reached = most == NULL ? -1 : PyObject_RichCompareBool(nr, most, Py_GE);
    Py_XDECREF(nr);
    Py_XDECREF(most);
    if (reached == 1) {
        PyObject *done = PyObject_CallNoArgs(self->max_reached);
        reached = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    return reached;
}

/* post_request(worker, req, environ, resp): out of flight, recorded here or by finish(). */
static PyObject *
WSGIHooks_post_request(WSGIHooks *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "post_request() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *worker = args[0], *req = args[1], *environ = args[2], *resp = args[3];
    double ended;
    if (now(&ended) < 0) {
        hooks_failed(self);
        Py_RETURN_NONE;
    }
    PyObject *stamp = PyObject_GetAttr(req, self->started_attr);
    if (stamp == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError))
            PyErr_Clear();  /* pre_request did not run for this request */
        else
            hooks_failed(self);
        Py_RETURN_NONE;
    }
    double started = PyFloat_AsDouble(stamp);
    Py_DECREF(stamp);
    PyObject *duration = NULL;
    if ((started == -1.0 && PyErr_Occurred())
            || add_to_gauge(self->gauges, self->gauge_index, -1.0) < 0
            || (duration = PyFloat_FromDouble(ended - started)) == NULL) {
        hooks_failed(self);
        Py_RETURN_NONE;
    }
    int truthy = PyObject_IsTrue(environ);
    int known = truthy <= 0 ? truthy : record_known_wsgi(self, environ, resp, duration, ended);
    if (known == 0 && truthy == 1) {
        PyObject *end = PyFloat_FromDouble(ended);
        PyObject *finish_args[] = {environ, resp, duration, end};
        PyObject *done = end == NULL ? NULL
            : PyObject_Vectorcall(self->finish, finish_args, 4, NULL);
        Py_XDECREF(end);
        Py_XDECREF(done);
        known = done == NULL ? -1 : 1;
    }
    Py_DECREF(duration);
    if (known < 0 || check_max_requests(self, worker) < 0)
        hooks_failed(self);
    Py_RETURN_NONE;
}

static PyObject *
WSGIHooks_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"started_attr", "gauges", "index", "resolved", "add", "known",
                               "extras", "usual", "finish", "failed", "max_reached", NULL};
    PyObject *started_attr, *gauges, *resolved, *add, *own_keys, *route_key, *by_path,
        *by_template, *extras, *extra_keys, *usual, *finish, *failed, *max_reached;
    Py_ssize_t index;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UOnO!O(O!UOO)(OO!)UOOO:WSGIHooks",
                                     keywords, &started_attr, &gauges, &index, &PyDict_Type,
                                     &resolved, &add, &PyTuple_Type, &own_keys, &route_key,
                                     &by_path, &by_template, &extras, &PyTuple_Type,
                                     &extra_keys, &usual, &finish, &failed, &max_reached))
        return NULL;
    int path_layout[3], template_layout[3];
    if (parse_layout(by_path, 3, path_layout) < 0
            || parse_layout(by_template, 1, template_layout) < 0)
        return NULL;
    Py_buffer values;  /* checked once here; every request checks again */
    if (get_values(gauges, &values) < 0)
        return NULL;
    release_values(&values);
    WSGIHooks *self = (WSGIHooks *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->started_attr = Py_NewRef(started_attr);
    PyUnicode_InternInPlace(&self->started_attr);
    self->gauges = Py_NewRef(gauges);
    self->gauge_index = index;
    self->resolved = Py_NewRef(resolved);
    self->add = Py_NewRef(add);
    self->own_keys = Py_NewRef(own_keys);
    self->route_key = Py_NewRef(route_key);
    memcpy(self->by_path, path_layout, sizeof(path_layout));
    memcpy(self->by_template, template_layout, sizeof(template_layout));
    self->extras = Py_NewRef(extras);
    self->extra_keys = Py_NewRef(extra_keys);
    self->usual = Py_NewRef(usual);
    self->finish = Py_NewRef(finish);
    self->failed = Py_NewRef(failed);
    self->max_reached = Py_NewRef(max_reached);
    return (PyObject *)self;
}

static int
WSGIHooks_traverse(WSGIHooks *self, visitproc visit, void *arg)
{
    Py_VISIT(self->gauges);
    Py_VISIT(self->resolved);
    Py_VISIT(self->add);
    Py_VISIT(self->own_keys);
    Py_VISIT(self->extras);
    Py_VISIT(self->extra_keys);
    Py_VISIT(self->finish);
    Py_VISIT(self->failed);
    Py_VISIT(self->max_reached);
    return 0;
}

static int
WSGIHooks_clear(WSGIHooks *self)
{
    Py_CLEAR(self->started_attr);
    Py_CLEAR(self->gauges);
    Py_CLEAR(self->resolved);
    Py_CLEAR(self->add);
    Py_CLEAR(self->own_keys);
    Py_CLEAR(self->route_key);
    Py_CLEAR(self->extras);
    Py_CLEAR(self->extra_keys);
    Py_CLEAR(self->usual);
    Py_CLEAR(self->finish);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->max_reached);
    return 0;
}

static void
WSGIHooks_dealloc(WSGIHooks *self)
{
    PyObject_GC_UnTrack(self);
    WSGIHooks_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef WSGIHooks_methods[] = {
    {"pre_request", (PyCFunction)(void (*)(void))WSGIHooks_pre_request, METH_FASTCALL,
     "pre_request($self, worker, req, /)\n--\n\ngunicorn's pre_request hook."},
    {"post_request", (PyCFunction)(void (*)(void))WSGIHooks_post_request, METH_FASTCALL,
     "post_request($self, worker, req, environ, resp, /)\n--\n\n"
     "gunicorn's post_request hook."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WSGIHooksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.WSGIHooks",
    .tp_basicsize = sizeof(WSGIHooks),
    .tp_dealloc = (destructor)WSGIHooks_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "WSGIHooks(started_attr, gauges, index, resolved, add, known, extras, usual, "
              "finish, failed, max_reached): WSGIRequestHooks' pre_request and post_request "
              "in C; known = (own environ keys, route key, key by path, key by template), "
              "extras = (RequestExtras.wsgi, the environ keys it reads).",
    .tp_traverse = (traverseproc)WSGIHooks_traverse,
    .tp_clear = (inquiry)WSGIHooks_clear,
    .tp_methods = WSGIHooks_methods,
    .tp_new = WSGIHooks_new,
};

/* -- the WSGI application: workers/body.py's metered ------------------------------------
 *
 * MeteredWSGI(app, python, file_key, file_bytes) is the application a WSGI worker calls:
 * the common request goes straight to ``app``; one with a chunked body (or an environ that
 * is not a dict) goes to ``python``, body.metered's own wrapper, which meters the body.
 * A ``wsgi.file_wrapper`` response leaves file_bytes(result) in environ[file_key], as the
 * Python wrapper does.
 */

static PyObject *s_transfer_encoding, *s_file_wrapper;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *app, *python, *file_key, *file_bytes;
} MeteredWSGI;

static PyObject *
MeteredWSGI_vectorcall(MeteredWSGI *self, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *environ = nargs > 0 ? args[0] : NULL;
    int python = environ == NULL || !PyDict_CheckExact(environ) || kwnames != NULL;
    if (!python) {  /* a body without a declared length: the Python wrapper meters it */
        int length = PyDict_Contains(environ, s_content_length);
        python = length != 0 ? length : PyDict_Contains(environ, s_transfer_encoding);
        if (python < 0)
            return NULL;
        python = length == 0 && python == 1;
    }
    if (python)
        return PyObject_Vectorcall(self->python, args, nargsf, kwnames);
    PyObject *result = PyObject_Vectorcall(self->app, args, nargsf, kwnames);
    if (result == NULL)
        return NULL;
    /* held: isinstance may run the result's code (a __class__ of its own) */
    PyObject *wrapper = Py_XNewRef(PyDict_GetItemWithError(environ, s_file_wrapper));
    int file = wrapper == NULL || wrapper == Py_None ? 0 : PyObject_IsInstance(result, wrapper);
    Py_XDECREF(wrapper);
    if (file == 1) {
        PyObject *size = PyObject_CallOneArg(self->file_bytes, result);
        file = size == NULL ? -1 : PyDict_SetItem(environ, self->file_key, size);
        Py_XDECREF(size);
    }
    if (file < 0 || PyErr_Occurred()) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
MeteredWSGI_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"app", "python", "file_key", "file_bytes", NULL};
    PyObject *app, *python, *file_key, *file_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOUO:MeteredWSGI", keywords, &app,
                                     &python, &file_key, &file_bytes))
        return NULL;
    MeteredWSGI *self = (MeteredWSGI *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)MeteredWSGI_vectorcall;
    self->app = Py_NewRef(app);
    self->python = Py_NewRef(python);
    self->file_key = Py_NewRef(file_key);
    self->file_bytes = Py_NewRef(file_bytes);
    return (PyObject *)self;
}

static int
MeteredWSGI_traverse(MeteredWSGI *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->python);
    Py_VISIT(self->file_bytes);
    return 0;
}

static int
MeteredWSGI_clear(MeteredWSGI *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->python);
    Py_CLEAR(self->file_key);
    Py_CLEAR(self->file_bytes);
    return 0;
}

static void
MeteredWSGI_dealloc(MeteredWSGI *self)
{
    PyObject_GC_UnTrack(self);
    MeteredWSGI_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef MeteredWSGI_members[] = {
    {"app", T_OBJECT, offsetof(MeteredWSGI, app), READONLY, "The application wrapped."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject MeteredWSGIType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.MeteredWSGI",
    .tp_basicsize = sizeof(MeteredWSGI),
    .tp_dealloc = (destructor)MeteredWSGI_dealloc,
    .tp_vectorcall_offset = offsetof(MeteredWSGI, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "MeteredWSGI(app, python, file_key, file_bytes): body.metered's wrapper in C; "
              "a request with a chunked body goes to python().",
    .tp_traverse = (traverseproc)MeteredWSGI_traverse,
    .tp_clear = (inquiry)MeteredWSGI_clear,
    .tp_members = MeteredWSGI_members,
    .tp_new = MeteredWSGI_new,
};


/* -- the ASGI wrapper: workers/asgi_metrics.py's ASGIMetrics -------------------------------------
 *
 * MeteredApp(app, record, gone, gauges, index) is the application a worker serves. A call
 * with an HTTP scope returns a MeteredCall: an awaitable that, when first driven, counts
 * the request in flight, calls the application with a metered receive and send
 * (RequestMeter) and hands every step on to it; when the application returns or raises it
 * takes the request out of the in-flight gauge and calls ``record(scope, status,
 * duration, received, sent, error_type, ended)`` (ASGIMetrics.record: the labels and the
 * stores). A request whose series is already known is recorded here (record_known); any
 * other goes through ``record``. Other scopes go to the application untouched. Needs
 * PyIter_Send (Python 3.10). */

static PyObject *s_type, *s_status, *s_body, *s_more_body, *s_path, *s_get, *s_http;
static PyObject *s_response_start, *s_response_body, *s_response_pathsend;
static PyObject *s_throw, *s_close;
static PyObject *s_method, *s_headers;
static PyObject *file_size;     /* workers.asgi_metrics._file_size, imported at the first pathsend */

/* time.perf_counter(), the clock of the Python path, read without a call into Python. */
static int
now(double *out)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounter(&t) < 0)
        return -1;
    *out = PyTime_AsSecondsDouble(t);
#else
    *out = _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
    return 0;
}

/* ``callable(*args)`` for the application and the server's send and receive, called once
 * or twice a request: straight through the callable's vectorcall where it has one, without
 * PyObject_Vectorcall's wrapper and its check of the result (about 25 instructions a call;
 * a NULL is checked by every caller). */
static inline PyObject *
call_vector(PyObject *callable, PyObject *const *args, size_t nargsf)
{
    vectorcallfunc call = PyVectorcall_Function(callable);
    return call != NULL ? call(callable, args, nargsf, NULL)
                        : PyObject_Vectorcall(callable, args, nargsf, NULL);
}

/* ``gauges[index] += delta`` (the in-flight gauge of a single-threaded event loop). */
static int
add_to_gauge(PyObject *gauges, Py_ssize_t index, double delta)
{
    Py_buffer values;
    if (get_values(gauges, &values) < 0)
        return -1;
    int rc = add_at_index(&values, index, delta);
    release_values(&values);
    return rc;
}

/* message.get(key): borrowed for a dict (what servers send), a new reference otherwise;
 * ``*owned`` says which. NULL without an error: absent. */
static PyObject *
message_get(PyObject *message, PyObject *key, int *owned)
{
    if (PyDict_Check(message)) {
        *owned = 0;
        return PyDict_GetItemWithError(message, key);
    }
    *owned = 1;
    PyObject *value = PyObject_CallMethodOneArg(message, s_get, key);
    if (value == Py_None) {
        Py_DECREF(value);
        return NULL;
    }
    return value;
}

/* message[key]: a dict (what servers and applications send) looked up directly, anything
 * else, and a missing key's KeyError, through PyObject_GetItem as Python does. New
 * reference. */
static PyObject *
message_item(PyObject *message, PyObject *key)
{
    if (PyDict_CheckExact(message)) {
        PyObject *value = PyDict_GetItemWithError(message, key);
        if (value != NULL)
            return Py_NewRef(value);
        if (PyErr_Occurred())
            return NULL;
    }
    return PyObject_GetItem(message, key);
}

/* ``value == text`` for one of the interned message types here: an exact str is compared
 * in place (a message type is rarely the interned object itself: it has dots), anything
 * else through ==. 1, 0, or -1 on error. */
static int
is_text(PyObject *value, PyObject *text)
{
    if (value == text)
        return 1;
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_READY(value)) {
        Py_ssize_t length = PyUnicode_GET_LENGTH(value);
        return length == PyUnicode_GET_LENGTH(text)
            && PyUnicode_KIND(value) == PyUnicode_KIND(text)
            && memcmp(PyUnicode_DATA(value), PyUnicode_DATA(text),
                      length * PyUnicode_KIND(value)) == 0;
    }
    return PyObject_RichCompareBool(value, text, Py_EQ);
}

/* A truthy ``message.get(key)``: 1, 0, or -1 on error; ``*length`` gets its len() when
 * ``length`` is not NULL. */
static int
truthy_get(PyObject *message, PyObject *key, Py_ssize_t *length)
{
    int owned;
    PyObject *value = message_get(message, key, &owned);
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int truth;
    if (PyBytes_CheckExact(value) && length != NULL) {  /* a body, most often */
        *length = PyBytes_GET_SIZE(value);
        truth = *length != 0;
    } else {
        truth = PyObject_IsTrue(value);
        if (truth > 0 && length != NULL) {
            *length = PyObject_Size(value);
            if (*length < 0)
                truth = -1;
        }
    }
    if (owned)
        Py_DECREF(value);
    return truth;
}

/* Ends an iteration with ``value`` as the awaited result (StopIteration(value)). */
static void
set_result(PyObject *value)
{
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
}

/* The iterator that drives an awaitable, as ``await`` finds it. */
static PyObject *
await_iter(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable) || PyGen_CheckExact(awaitable))
        return Py_NewRef(awaitable);
    PyAsyncMethods *async = Py_TYPE(awaitable)->tp_as_async;
    if (async == NULL || async->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *it = async->am_await(awaitable);
    if (it != NULL && !PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
        Py_CLEAR(it);
    }
    return it;
}

/* inner.throw(*args) as a send result: a finished ``inner`` (it raised
 * StopIteration) is PYGEN_RETURN with its value. */
static PySendResult
call_as_send(PyObject *inner, PyObject *name, PyObject *args, PyObject **result)
{
    PyObject *method = PyObject_GetAttr(inner, name);
    *result = method == NULL ? NULL : PyObject_Call(method, args, NULL);
    Py_XDECREF(method);
    if (*result != NULL)
        return PYGEN_NEXT;
    if (!PyErr_ExceptionMatches(PyExc_StopIteration))
        return PYGEN_ERROR;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    *result = value == NULL ? Py_NewRef(Py_None)
                            : PyObject_GetAttrString(value, "value");
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return *result == NULL ? PYGEN_ERROR : PYGEN_RETURN;
}

/* A send result as a method's return (send, throw): a yielded value, or StopIteration. */
static PyObject *
as_method_result(PySendResult status, PyObject *result)
{
    if (status == PYGEN_RETURN) {
        set_result(result);
        Py_DECREF(result);
        return NULL;
    }
    return result;  /* NEXT: the value; ERROR: NULL with the exception set */
}

/* tp_iternext of the awaitables here, through their am_send: StopIteration(None) is NULL
 * with nothing set. */
static PyObject *
awaitable_next(PyObject *self)
{
    PyObject *result;
    PySendResult status = Py_TYPE(self)->tp_as_async->am_send(self, Py_None, &result);
    if (status == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL;
    }
    return as_method_result(status, result);
}

/* Their send(value) method, through am_send as well. */
static PyObject *
awaitable_send(PyObject *self, PyObject *value)
{
    PyObject *result;
    PySendResult status = Py_TYPE(self)->tp_as_async->am_send(self, value, &result);
    return as_method_result(status, result);
}

/* -- RequestMeter: the send (and receive) the application is given ---------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send;      /* the server's send and receive */
    PyObject *receive;
    PyObject *status;    /* the status sent: 0 until http.response.start */
    long long sent;
    long long received;
    double started;
    double ended;        /* 0.0 until the last body message */
} RequestMeter;

static PyTypeObject RequestMeterType;
static PyTypeObject ReceivingType;

static int
count_pathsend(RequestMeter *self, PyObject *message)
{
    if (file_size == NULL) {
        PyObject *module = PyImport_ImportModule("gunicorn_prometheus_exporter.workers.asgi_metrics");
        if (module == NULL)
            return -1;
        file_size = PyObject_GetAttrString(module, "_file_size");
        Py_DECREF(module);
        if (file_size == NULL)
            return -1;
    }
    int owned;
    PyObject *path = message_get(message, s_path, &owned);
    if (path == NULL && PyErr_Occurred())
        return -1;
    PyObject *size = PyObject_CallOneArg(file_size, path ? path : Py_None);
    if (owned)
        Py_XDECREF(path);
    if (size == NULL)
        return -1;
    long long n = PyLong_AsLongLong(size);
    Py_DECREF(size);
    if (n == -1 && PyErr_Occurred())
        return -1;
    self->sent += n;
    return now(&self->ended);
}

/* An http.response.body message: its body's length counted, and the response's end when
 * no truthy more_body follows. A message dict that holds nothing but its type and a body
 * (the last one, most often) has no more_body to look up. */
static int
count_body(RequestMeter *self, PyObject *message)
{
    Py_ssize_t length = 0;
    int body = truthy_get(message, s_body, &length);
    if (body < 0)
        return -1;
    int more = 0;
    if (!(body && PyDict_CheckExact(message) && PyDict_GET_SIZE(message) == 2)
            && (more = truthy_get(message, s_more_body, NULL)) < 0)
        return -1;
    self->sent += length;
    return more ? 0 : now(&self->ended);
}

/* The message types observe() tells apart, and the last str found equal to each: an
 * application sends its own constants, the same objects every request, which are then
 * known by identity instead of compared character by character. A str never changes, and
 * the reference held keeps its address from being another's. */
enum { SEEN_BODY, SEEN_START, SEEN_PATHSEND };
static PyObject *seen_type[3];

/* is_text(kind, text), remembering an exact str found equal as seen_type[seen]. */
static int
is_type(PyObject *kind, int seen, PyObject *text)
{
    if (kind == seen_type[seen])
        return 1;
    int is = is_text(kind, text);
    if (is == 1 && PyUnicode_CheckExact(kind))
        Py_XSETREF(seen_type[seen], Py_NewRef(kind));
    return is;
}

/* Look at one message, as workers/asgi_metrics.py's counting_send does. */
static int
observe(RequestMeter *self, PyObject *message)
{
    PyObject *kind = message_item(message, s_type);
    if (kind == NULL)
        return -1;
    int rc = 0, is;
    if ((is = is_type(kind, SEEN_BODY, s_response_body)) != 0) {
        rc = is < 0 ? -1 : count_body(self, message);
    } else if ((is = is_type(kind, SEEN_START, s_response_start)) != 0) {
        PyObject *status = is < 0 ? NULL : message_item(message, s_status);
        if (status == NULL)
            rc = -1;
        else
            Py_SETREF(self->status, status);
    } else if ((is = is_type(kind, SEEN_PATHSEND, s_response_pathsend)) != 0) {
        rc = is < 0 ? -1 : count_pathsend(self, message);
    }
    Py_DECREF(kind);
    return rc;
}

/* meter(message): the application's send. */
static PyObject *
RequestMeter_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                        PyObject *kwnames)
{
    RequestMeter *self = (RequestMeter *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send() takes one message");
        return NULL;
    }
    if (observe(self, args[0]) < 0)
        return NULL;
    return call_vector(self->send, args, nargsf);
}

/* Sets the meter out for a request served by ``send`` and ``receive``, its clock started. */
static int
start_meter(RequestMeter *self, PyObject *send, PyObject *receive)
{
    Py_XSETREF(self->send, Py_NewRef(send));
    Py_XSETREF(self->receive, Py_NewRef(receive));
    Py_XSETREF(self->status, PyLong_FromLong(0));
    self->sent = self->received = 0;
    self->ended = 0.0;
    return self->status == NULL ? -1 : now(&self->started);
}

static RequestMeter *
new_meter(PyObject *send, PyObject *receive)
{
    RequestMeter *self = PyObject_GC_New(RequestMeter, &RequestMeterType);
    if (self == NULL)
        return NULL;
    self->vectorcall = RequestMeter_vectorcall;
    self->send = self->receive = self->status = NULL;
    PyObject_GC_Track(self);
    if (start_meter(self, send, receive) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return self;
}

static int
RequestMeter_traverse(RequestMeter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->send);
    Py_VISIT(self->receive);
    Py_VISIT(self->status);
    return 0;
}

static int
RequestMeter_clear(RequestMeter *self)
{
    Py_CLEAR(self->send);
    Py_CLEAR(self->receive);
    Py_CLEAR(self->status);
    return 0;
}

static void
RequestMeter_dealloc(RequestMeter *self)
{
    PyObject_GC_UnTrack(self);
    RequestMeter_clear(self);
    PyObject_GC_Del(self);
}

/* Receiving: one ``await receive()`` of the application, counting the body it returns. */
typedef struct {
    PyObject_HEAD
    RequestMeter *meter;
    PyObject *inner;  /* the server's receive() awaitable, driven */
} Receiving;

/* meter.receive(): the application's receive. */
static PyObject *
RequestMeter_receive(RequestMeter *self, PyObject *unused)
{
    (void)unused;
    PyObject *awaitable = call_vector(self->receive, NULL, 0);
    if (awaitable == NULL)
        return NULL;
    PyObject *inner = await_iter(awaitable);
    Py_DECREF(awaitable);
    if (inner == NULL)
        return NULL;
    Receiving *receiving = PyObject_GC_New(Receiving, &ReceivingType);
    if (receiving == NULL) {
        Py_DECREF(inner);
        return NULL;
    }
    receiving->meter = (RequestMeter *)Py_NewRef(self);
    receiving->inner = inner;
    PyObject_GC_Track(receiving);
    return (PyObject *)receiving;
}

static PyMethodDef RequestMeter_receive_def = {
    "receive", (PyCFunction)RequestMeter_receive, METH_NOARGS,
    "receive(): the server's receive, its body bytes counted."};

/* The received message's body, counted; on a count that fails, the message is dropped. */
static PySendResult
count_received(Receiving *self, PySendResult status, PyObject **result)
{
    if (status != PYGEN_RETURN)
        return status;
    Py_ssize_t length = 0;
    int has_body = truthy_get(*result, s_body, &length);
    if (has_body < 0) {
        Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    self->meter->received += length;
    return PYGEN_RETURN;
}

static PySendResult
Receiving_am_send(Receiving *self, PyObject *value, PyObject **result)
{
    return count_received(self, PyIter_Send(self->inner, value, result), result);
}

static PyObject *
Receiving_throw(Receiving *self, PyObject *args)
{
    PyObject *result;
    PySendResult status = count_received(self, call_as_send(self->inner, s_throw, args, &result),
                                         &result);
    return as_method_result(status, result);
}

static PyObject *
Receiving_close(Receiving *self, PyObject *unused)
{
    (void)unused;
    return PyObject_CallMethodNoArgs(self->inner, s_close);
}

static int
Receiving_traverse(Receiving *self, visitproc visit, void *arg)
{
    Py_VISIT(self->meter);
    Py_VISIT(self->inner);
    return 0;
}

static int
Receiving_clear(Receiving *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->inner);
    return 0;
}

static void
Receiving_dealloc(Receiving *self)
{
    PyObject_GC_UnTrack(self);
    Receiving_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
self_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyAsyncMethods Receiving_async = {
    .am_await = self_await,
    .am_send = (sendfunc)Receiving_am_send,
};

static PyMethodDef Receiving_methods[] = {
    {"send", (PyCFunction)awaitable_send, METH_O, NULL},
    {"throw", (PyCFunction)Receiving_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)Receiving_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReceivingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.Receiving",
    .tp_basicsize = sizeof(Receiving),
    .tp_dealloc = (destructor)Receiving_dealloc,
    .tp_as_async = &Receiving_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One await of the application's receive(), its body bytes counted.",
    .tp_traverse = (traverseproc)Receiving_traverse,
    .tp_clear = (inquiry)Receiving_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = awaitable_next,
    .tp_methods = Receiving_methods,
};

static PyTypeObject RequestMeterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.RequestMeter",
    .tp_basicsize = sizeof(RequestMeter),
    .tp_dealloc = (destructor)RequestMeter_dealloc,
    .tp_vectorcall_offset = offsetof(RequestMeter, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "The send an ASGI application is given: ASGIMetrics' counting_send.",
    .tp_traverse = (traverseproc)RequestMeter_traverse,
    .tp_clear = (inquiry)RequestMeter_clear,
};

/* -- MeteredApp and MeteredCall ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *app;
    PyObject *record;   /* ASGIMetrics.record: any request, labelled in Python */
    PyObject *resolved; /* RequestLabeller.resolved: request key -> series */
    PyObject *add;      /* Recorder.add */
    RequestWriter *writer; /* the RequestWriter whose add ``add`` is, called directly; NULL
                            * for any other ``add`` (called as Python calls it) */
    PyObject *gone;     /* exception classes of a client that went away (499) */
    PyObject *gauges;   /* the in-flight gauge: view and index */
    Py_ssize_t gauge_index;
    /* handed over by Python (asgi_metrics.KNOWN_REQUEST), never re-derived here: */
    PyObject *own_keys;      /* scope keys that leave a request to record() */
    PyObject *unmatched_key; /* a router ran and matched no route ("unmatched") */
    PyObject *route_key;     /* the matched route in the scope ... */
    PyObject *template_attr; /* ... and its attribute holding the template */
    int by_path[3];          /* the key layouts of ``resolved``: positions in */
    int by_template[3];      /* (method, path, status, template) */
    PyObject *wanted;        /* header names (bytes) whose requests record() takes */
    PyObject *version_key;   /* the scope key of the protocol version, and ... */
    PyObject *usual_version; /* ... its usual value: any other goes to record() */
    PyObject *other;         /* serves the scopes other than http (the app, or
                              * ASGIMetrics.other_scope: WebSockets measured) */
    struct MeteredCall *spare; /* a finished call, served again when nothing else holds it */
    PyObject *last_key, *last_series; /* the last request key found in ``resolved`` */
} MeteredApp;

enum { CALL_NEW, CALL_RUNNING, CALL_DONE };

typedef struct MeteredCall {
    PyObject_HEAD
    MeteredApp *owner;
    PyObject *scope, *receive, *send;
    RequestMeter *meter;  /* from the first step */
    PyObject *metered_receive; /* meter.receive, the receive the application is given */
    PyObject *inner;      /* the application's awaitable, driven */
    int state;
    int stepping;         /* 1 while a step of the application runs (send, throw, close) */
} MeteredCall;

static PyTypeObject MeteredAppType;
static PyTypeObject MeteredCallType;

/* 1 when the scope's headers hold one of ``wanted`` (a proxy's queue stamp, a trace
 * context): record() reads them. Lengths are compared first, so a request without any
 * costs a few integer comparisons per header. 0: none (or headers not in the usual form). */
static int
has_wanted_header(PyObject *wanted, PyObject *scope)
{
    Py_ssize_t count = PyTuple_GET_SIZE(wanted);
    if (count == 0)
        return 0;
    PyObject *headers = PyDict_GetItemWithError(scope, s_headers);
    if (headers == NULL || !PyList_CheckExact(headers))
        return headers == NULL && PyErr_Occurred() ? -1 : 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2)
            continue;
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        if (!PyBytes_CheckExact(name))
            continue;
        Py_ssize_t length = PyBytes_GET_SIZE(name);
        for (Py_ssize_t j = 0; j < count; j++) {
            PyObject *want = PyTuple_GET_ITEM(wanted, j);
            if (PyBytes_GET_SIZE(want) == length
                    && memcmp(PyBytes_AS_STRING(want), PyBytes_AS_STRING(name), length) == 0)
                return 1;
        }
    }
    return 0;
}

/* 1 when the request is over the usual protocol version (or none is known), 0 when it is
 * not (record() counts it), -1: an error. */
static int
usual_version(MeteredApp *owner, PyObject *scope)
{
    if (owner->version_key == NULL)
        return 1;
    PyObject *version = PyDict_GetItemWithError(scope, owner->version_key);
    if (version == NULL)
        return PyErr_Occurred() ? -1 : 1;
    return is_text(version, owner->usual_version);
}

/* 1 when ``fields`` are the items of ``key``, as dict keys compare them, for the str and
 * int a request key holds; 0 for anything else, or another key. */
static int
same_key(PyObject *key, PyObject *const fields[3])
{
    for (int i = 0; i < 3; i++) {
        PyObject *known = PyTuple_GET_ITEM(key, i), *field = fields[i];
        if (known == field)
            continue;
        if (PyUnicode_CheckExact(known) && PyUnicode_CheckExact(field)) {
            if (is_text(field, known) != 1)
                return 0;
        } else if (!(PyLong_CheckExact(known) && PyLong_CheckExact(field)
                     && PyObject_RichCompareBool(known, field, Py_EQ) == 1)) {
            return 0;
        }
    }
    return 1;
}

/* ``resolved[key]`` of the key made of ``fields`` (borrowed; NULL: absent or an error),
 * remembered with its key: the next request is most often the same, and is then known
 * without making, hashing and comparing a key tuple (about 400 instructions). An answer
 * in ``resolved`` never changes (RequestLabeller._resolve keeps only those), so one
 * remembered stays right when ``resolved`` is cleared. */
static PyObject *
resolved_series(MeteredApp *owner, PyObject *const fields[3])
{
    PyObject *key = PyTuple_Pack(3, fields[0], fields[1], fields[2]);
    if (key == NULL)
        return NULL;
    PyObject *series = PyDict_GetItemWithError(owner->resolved, key);
    if (series != NULL) {
        Py_XSETREF(owner->last_series, Py_NewRef(series));
        Py_XSETREF(owner->last_key, key);
        return series;  /* held by last_series too */
    }
    Py_DECREF(key);
    return NULL;
}

/* The common request in C: no exception, none of the scope keys Python labels itself
 * (``own_keys``), and its series already known: the key is built with the layout Python
 * handed over (RequestLabeller.record builds it the same way). 1: recorded; 0: not this
 * kind, record() labels it; -1: an error. */
static int
record_known(MeteredApp *owner, PyObject *scope, RequestMeter *meter, double duration)
{
    if (!PyDict_CheckExact(scope))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(owner->own_keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyDict_GetItemWithError(scope, PyTuple_GET_ITEM(owner->own_keys, i)) != NULL
                || PyErr_Occurred())
            return PyErr_Occurred() ? -1 : 0;
    }
    int wanted = has_wanted_header(owner->wanted, scope);
    if (wanted != 0)
        return wanted < 0 ? -1 : 0;
    int usual = usual_version(owner, scope);
    if (usual <= 0)
        return usual;
    /* the scope's values are borrowed: read after the route's template, whose attribute
     * may be the application's code */
    PyObject *fields[4] = {NULL, NULL, meter->status, NULL};
    const int *layout;
    PyObject *template = NULL, *route = PyDict_GetItemWithError(scope, owner->route_key);
    if (route == NULL) {
        if (PyErr_Occurred() || PyDict_GetItemWithError(scope, owner->unmatched_key) != NULL)
            return PyErr_Occurred() ? -1 : 0;  /* no route matched: "unmatched" */
        fields[1] = PyDict_GetItemWithError(scope, s_path);
        if (fields[1] == NULL)
            return PyErr_Occurred() ? -1 : 0;
        layout = owner->by_path;
    } else {
        template = PyObject_GetAttr(route, owner->template_attr);
        if (template == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (!PyUnicode_CheckExact(template) || PyUnicode_GET_LENGTH(template) == 0) {
            Py_DECREF(template);
            return 0;
        }
        fields[3] = template;
        layout = owner->by_template;
    }
    fields[0] = PyDict_GetItemWithError(scope, s_method);
    if (fields[0] == NULL) {
        Py_XDECREF(template);
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *key_fields[3] = {fields[layout[0]], fields[layout[1]], fields[layout[2]]};
    PyObject *series = owner->last_key != NULL && same_key(owner->last_key, key_fields)
        ? owner->last_series : resolved_series(owner, key_fields);
    Py_XDECREF(template);
    if (series == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (owner->writer != NULL)  /* no Python call, and no objects for the numbers */
        return write_request(owner->writer, series, duration, (double)meter->received,
                             (double)meter->sent) < 0 ? -1 : 1;
    Py_INCREF(series);  /* an add of Python's own may change ``resolved`` */
    PyObject *numbers[] = {PyFloat_FromDouble(duration), PyLong_FromLongLong(meter->received),
                           PyLong_FromLongLong(meter->sent)};
    PyObject *done = NULL;
    if (numbers[0] != NULL && numbers[1] != NULL && numbers[2] != NULL) {
        PyObject *args[] = {series, numbers[0], numbers[1], numbers[2]};
        done = PyObject_Vectorcall(owner->add, args, 4, NULL);
    }
    for (int i = 0; i < 3; i++)
        Py_XDECREF(numbers[i]);
    Py_DECREF(series);
    Py_XDECREF(done);
    return done == NULL ? -1 : 1;
}

/* ``record(scope, status, duration, received, sent, error_type, ended)``: ASGIMetrics.record
 * (``end``: the perf_counter when the request ended). */
static int
record_in_python(MeteredCall *self, double end, PyObject *error_type)
{
    RequestMeter *meter = self->meter;
    PyObject *numbers[] = {PyFloat_FromDouble(end - meter->started),
                           PyLong_FromLongLong(meter->received),
                           PyLong_FromLongLong(meter->sent), PyFloat_FromDouble(end)};
    PyObject *done = NULL;
    if (numbers[0] != NULL && numbers[1] != NULL && numbers[2] != NULL && numbers[3] != NULL) {
        PyObject *args[] = {self->scope, meter->status, numbers[0], numbers[1], numbers[2],
                            error_type, numbers[3]};
        done = PyObject_Vectorcall(self->owner->record, args, 7, NULL);
    }
    for (int i = 0; i < 4; i++)
        Py_XDECREF(numbers[i]);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* The request is over: out of the in-flight gauge, and recorded. ``error`` is what the
 * application raised (NULL: it returned). Nothing here may replace that exception: a
 * failure to record is reported as unraisable (ASGIMetrics.record logs its own). */
static void
conclude(MeteredCall *self, PyObject *error)
{
    MeteredApp *owner = self->owner;
    RequestMeter *meter = self->meter;
    self->state = CALL_DONE;
    Py_CLEAR(self->inner);
    if (add_to_gauge(owner->gauges, owner->gauge_index, -1.0) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    double end = meter->ended;
    PyObject *error_type = Py_None, *name = NULL;
    if (error != NULL) {
        int gone = PyObject_IsInstance(error, owner->gone);
        int started = PyObject_IsTrue(meter->status);
        if (gone < 0 || started < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
            return;
        }
        if (!started) {
            PyObject *status = PyLong_FromLong(gone ? 499 : 500);
            if (status == NULL) {
                PyErr_WriteUnraisable((PyObject *)self);
                return;
            }
            Py_SETREF(meter->status, status);
        }
        if (!gone) {
            name = PyObject_GetAttrString((PyObject *)Py_TYPE(error), "__name__");
            if (name == NULL) {
                PyErr_WriteUnraisable((PyObject *)self);
                return;
            }
            error_type = name;
        }
    }
    if (end == 0.0 && now(&end) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
        Py_XDECREF(name);
        return;
    }
    int known = error == NULL ? record_known(owner, self->scope, meter, end - meter->started)
                              : 0;
    if (known < 0)  /* record() tries again, and logs what fails */
        PyErr_Clear();
    if (known != 1 && record_in_python(self, end, error_type) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(name);
}

/* conclude() for a step that ended the application: its return, or the exception set. */
static PySendResult
end_of(MeteredCall *self, PySendResult status, PyObject **result)
{
    if (status == PYGEN_NEXT)
        return status;
    if (status == PYGEN_RETURN) {
        conclude(self, NULL);
        Py_SETREF(*result, Py_NewRef(Py_None));  /* the wrapper returns None, as in Python */
        return status;
    }
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    conclude(self, value);
    PyErr_Restore(type, value, traceback);
    return status;
}

/* A finished call, kept by its owner to serve a later request once the server has let go
 * of it: a call, its meter and the meter's receive allocated, tracked by the collector and
 * freed per request were about 700 instructions. The request's own objects are let go of
 * now; the meter and its receive are kept only where nothing else holds them (an
 * application may keep its send or receive past its return). */
static void
retire(MeteredCall *self)
{
    MeteredApp *owner = self->owner;
    Py_CLEAR(self->scope);
    Py_CLEAR(self->receive);
    Py_CLEAR(self->send);
    RequestMeter *meter = self->meter;
    if (meter != NULL && self->metered_receive != NULL && Py_REFCNT(meter) == 2
            && Py_REFCNT(self->metered_receive) == 1) {
        Py_CLEAR(meter->send);  /* the server's: not kept past its request */
        Py_CLEAR(meter->receive);
    } else {
        Py_CLEAR(self->metered_receive);
        Py_CLEAR(self->meter);
    }
    if (owner->spare == NULL)
        owner->spare = (MeteredCall *)Py_NewRef(self);
}

/* The first step: count the request in flight and call the application. */
static int
begin(MeteredCall *self)
{
    MeteredApp *owner = self->owner;
    self->state = CALL_RUNNING;
    int metered = self->meter != NULL  /* kept from its last request (retire) */
        ? start_meter(self->meter, self->send, self->receive)
        : (self->meter = new_meter(self->send, self->receive)) == NULL ? -1 : 0;
    if (metered < 0 || add_to_gauge(owner->gauges, owner->gauge_index, 1.0) < 0) {
        self->state = CALL_DONE;  /* never counted: nothing to conclude */
        return -1;
    }
    if (self->metered_receive == NULL)
        self->metered_receive = PyCFunction_New(&RequestMeter_receive_def,
                                                (PyObject *)self->meter);
    PyObject *awaitable = NULL;
    if (self->metered_receive != NULL) {
        /* a slot in front: a bound method's self goes there, not in a new array */
        PyObject *args[] = {NULL, self->scope, self->metered_receive, (PyObject *)self->meter};
        awaitable = call_vector(owner->app, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET);
    }
    if (awaitable != NULL) {
        self->inner = await_iter(awaitable);
        Py_DECREF(awaitable);
    }
    Py_CLEAR(self->receive);  /* the meter holds them now */
    Py_CLEAR(self->send);
    return self->inner == NULL ? -1 : 0;
}

/* A step asked for from inside a step (an application that drives its own wrapper, found
 * as the awaitable its caller waits on) raises, as a coroutine already executing does: it
 * would conclude the request under the running step and free the coroutine that runs it. */
static int
already_stepping(MeteredCall *self)
{
    if (!self->stepping)
        return 0;
    PyErr_SetString(PyExc_ValueError, "coroutine already executing");
    return 1;
}

static PySendResult
MeteredCall_am_send(MeteredCall *self, PyObject *value, PyObject **result)
{
    *result = NULL;
    if (already_stepping(self))
        return PYGEN_ERROR;
    if (self->state == CALL_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->state == CALL_NEW && value != Py_None) {
        PyErr_SetString(PyExc_TypeError,
                        "can't send non-None value to a just-started coroutine");
        return PYGEN_ERROR;
    }
    PySendResult status;
    self->stepping = 1;
    if (self->state == CALL_NEW && begin(self) < 0)
        status = self->state == CALL_DONE ? PYGEN_ERROR : end_of(self, PYGEN_ERROR, result);
    else
        status = end_of(self, PyIter_Send(self->inner, value, result), result);
    self->stepping = 0;
    if (status != PYGEN_NEXT)
        retire(self);
    return status;
}

/* throw(type[, value[, traceback]]): into the application where it waits; before the
 * first step, or after the last, the exception is raised here as a coroutine would. */
static PyObject *
MeteredCall_throw(MeteredCall *self, PyObject *args)
{
    if (already_stepping(self))
        return NULL;
    if (self->state != CALL_RUNNING) {
        PyObject *type = NULL, *value = Py_None, *traceback = NULL;
        self->state = CALL_DONE;
        if (!PyArg_ParseTuple(args, "O|OO:throw", &type, &value, &traceback))
            return NULL;
        if (PyExceptionInstance_Check(type))
            PyErr_SetObject((PyObject *)Py_TYPE(type), type);
        else if (PyExceptionClass_Check(type))
            PyErr_SetObject(type, value);
        else
            PyErr_SetString(PyExc_TypeError,
                            "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    PyObject *result;
    self->stepping = 1;
    PySendResult status = end_of(self, call_as_send(self->inner, s_throw, args, &result),
                                 &result);
    self->stepping = 0;
    return as_method_result(status, result);
}

/* close(): the application is closed where it waits; the request is recorded as the
 * Python wrapper records it, failed with GeneratorExit. */
static PyObject *
MeteredCall_close(MeteredCall *self, PyObject *unused)
{
    (void)unused;
    if (already_stepping(self))
        return NULL;
    if (self->state != CALL_RUNNING) {
        self->state = CALL_DONE;
        Py_RETURN_NONE;
    }
    self->stepping = 1;
    PyObject *closed = PyObject_CallMethodNoArgs(self->inner, s_close);
    if (closed == NULL) {
        end_of(self, PYGEN_ERROR, &closed);
        self->stepping = 0;
        return NULL;
    }
    Py_DECREF(closed);
    PyObject *exit = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exit != NULL)
        conclude(self, exit);
    Py_XDECREF(exit);
    self->stepping = 0;
    return exit == NULL ? NULL : Py_NewRef(Py_None);
}

/* A call dropped while the application waits is closed, as a coroutine is. */
static void
MeteredCall_finalize(MeteredCall *self)
{
    if (self->state != CALL_RUNNING)
        return;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *closed = MeteredCall_close(self, NULL);
    if (closed == NULL)
        PyErr_WriteUnraisable((PyObject *)self);
    Py_XDECREF(closed);
    PyErr_Restore(type, value, traceback);
}

static int
MeteredCall_traverse(MeteredCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->scope);
    Py_VISIT(self->receive);
    Py_VISIT(self->send);
    Py_VISIT(self->meter);
    Py_VISIT(self->metered_receive);
    Py_VISIT(self->inner);
    return 0;
}

static int
MeteredCall_clear(MeteredCall *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->receive);
    Py_CLEAR(self->send);
    Py_CLEAR(self->metered_receive);
    Py_CLEAR(self->meter);
    Py_CLEAR(self->inner);
    return 0;
}

static void
MeteredCall_dealloc(MeteredCall *self)
{
    /* finalized while still tracked, as CPython's generators are: a call resurrected by
     * its finalizer stays known to the collector */
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0)
        return;  /* resurrected */
    PyObject_GC_UnTrack(self);
    MeteredCall_clear(self);
    PyObject_GC_Del(self);
}

static PyAsyncMethods MeteredCall_async = {
    .am_await = self_await,
    .am_send = (sendfunc)MeteredCall_am_send,
};

static PyMethodDef MeteredCall_methods[] = {
    {"send", (PyCFunction)awaitable_send, METH_O, NULL},
    {"throw", (PyCFunction)MeteredCall_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)MeteredCall_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MeteredCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.MeteredCall",
    .tp_basicsize = sizeof(MeteredCall),
    .tp_dealloc = (destructor)MeteredCall_dealloc,
    .tp_as_async = &MeteredCall_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One HTTP request through MeteredApp: an awaitable over the application's.",
    .tp_traverse = (traverseproc)MeteredCall_traverse,
    .tp_clear = (inquiry)MeteredCall_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = awaitable_next,
    .tp_methods = MeteredCall_methods,
    .tp_finalize = (destructor)MeteredCall_finalize,
};

/* app(scope, receive, send) */
static PyObject *
MeteredApp_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    MeteredApp *self = (MeteredApp *)callable;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "an ASGI application takes (scope, receive, send)");
        return NULL;
    }
    PyObject *kind = message_item(args[0], s_type);
    if (kind == NULL)
        return NULL;
    int http = is_text(kind, s_http);
    Py_DECREF(kind);
    if (http < 0)
        return NULL;
    if (!http)  /* lifespan, websocket: ASGIMetrics.other_scope, or the application's own */
        return PyObject_Vectorcall(self->other, args, nargsf, NULL);
    MeteredCall *call = self->spare;
    if (call != NULL && Py_REFCNT(call) == 1) {  /* finished, and only the owner holds it */
        self->spare = NULL;  /* its reference is the caller's now */
    } else {
        call = PyObject_GC_New(MeteredCall, &MeteredCallType);
        if (call == NULL)
            return NULL;
        call->owner = (MeteredApp *)Py_NewRef(self);
        call->meter = NULL;
        call->metered_receive = NULL;
        PyObject_GC_Track(call);
    }
    call->scope = Py_NewRef(args[0]);
    call->receive = Py_NewRef(args[1]);
    call->send = Py_NewRef(args[2]);
    call->inner = NULL;
    call->state = CALL_NEW;
    call->stepping = 0;
    return (PyObject *)call;
}

/* The RequestWriter whose bound ``add`` this is (a new reference), or NULL: an add of
 * another kind (the Python path's, a test's) is called as Python calls it. */
static RequestWriter *
writer_of(PyObject *add)
{
    if (!PyCFunction_Check(add)
            || PyCFunction_GET_FUNCTION(add) != (PyCFunction)(void (*)(void))RequestWriter_add)
        return NULL;
    PyObject *owner = PyCFunction_GET_SELF(add);
    return owner != NULL && Py_IS_TYPE(owner, &RequestWriterType)
        ? (RequestWriter *)Py_NewRef(owner) : NULL;
}

/* One key layout: three positions in (method, path, status, template), none of them
 * ``absent`` (the field that layout never has). */
static int
parse_layout(PyObject *positions, int absent, int out[3])
{
    if (!PyTuple_Check(positions) || PyTuple_GET_SIZE(positions) != 3) {
        PyErr_SetString(PyExc_TypeError, "a key layout is a tuple of three positions");
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        long p = PyLong_AsLong(PyTuple_GET_ITEM(positions, i));
        if (p == -1 && PyErr_Occurred())
            return -1;
        if (p < 0 || p > 3 || p == absent) {
            PyErr_SetString(PyExc_ValueError, "a key layout position is out of its fields");
            return -1;
        }
        out[i] = (int)p;
    }
    return 0;
}

static PyObject *
MeteredApp_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"app", "record", "resolved", "add", "gone", "gauges", "index",
                               "known", "wanted", "version", "other", NULL};
    PyObject *app, *record, *resolved, *add, *gone, *gauges, *own_keys, *unmatched_key,
        *route_key, *template_attr, *by_path, *by_template, *wanted = NULL,
        *version_key = NULL, *usual = NULL, *other = NULL;
    Py_ssize_t index;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!OOOn(O!UUUOO)|O!(UU)O:MeteredApp",
                                     keywords, &app, &record, &PyDict_Type, &resolved, &add,
                                     &gone, &gauges, &index, &PyTuple_Type, &own_keys,
                                     &unmatched_key, &route_key, &template_attr, &by_path,
                                     &by_template, &PyTuple_Type, &wanted, &version_key,
                                     &usual, &other))
        return NULL;
    for (Py_ssize_t i = 0; wanted != NULL && i < PyTuple_GET_SIZE(wanted); i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(wanted, i))) {
            PyErr_SetString(PyExc_TypeError, "the wanted header names are bytes");
            return NULL;
        }
    }
    int path_layout[3], template_layout[3];
    if (parse_layout(by_path, 3, path_layout) < 0
            || parse_layout(by_template, 1, template_layout) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(own_keys); i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(own_keys, i))) {
            PyErr_SetString(PyExc_TypeError, "the scope keys are strings");
            return NULL;
        }
    }
    Py_buffer values;  /* checked once here; every request checks again */
    if (get_values(gauges, &values) < 0)
        return NULL;
    release_values(&values);
    MeteredApp *self = (MeteredApp *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->vectorcall = MeteredApp_vectorcall;
    self->app = Py_NewRef(app);
    self->record = Py_NewRef(record);
    self->resolved = Py_NewRef(resolved);
    self->add = Py_NewRef(add);
    self->gone = Py_NewRef(gone);
    self->gauges = Py_NewRef(gauges);
    self->gauge_index = index;
    self->own_keys = Py_NewRef(own_keys);
    self->unmatched_key = Py_NewRef(unmatched_key);
    self->route_key = Py_NewRef(route_key);
    self->template_attr = Py_NewRef(template_attr);
    memcpy(self->by_path, path_layout, sizeof(path_layout));
    memcpy(self->by_template, template_layout, sizeof(template_layout));
    self->wanted = wanted != NULL ? Py_NewRef(wanted) : PyTuple_New(0);
    self->version_key = Py_XNewRef(version_key);
    self->usual_version = Py_XNewRef(usual);
    self->other = Py_NewRef(other != NULL && other != Py_None ? other : app);
    self->writer = writer_of(add);
    self->spare = NULL;
    self->last_key = self->last_series = NULL;
    if (self->wanted == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
MeteredApp_traverse(MeteredApp *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->record);
    Py_VISIT(self->resolved);
    Py_VISIT(self->add);
    Py_VISIT(self->gone);
    Py_VISIT(self->gauges);
    Py_VISIT(self->own_keys);
    Py_VISIT(self->unmatched_key);
    Py_VISIT(self->route_key);
    Py_VISIT(self->template_attr);
    Py_VISIT(self->wanted);
    Py_VISIT(self->version_key);
    Py_VISIT(self->usual_version);
    Py_VISIT(self->other);
    Py_VISIT(self->writer);
    Py_VISIT(self->spare);
    Py_VISIT(self->last_key);
    Py_VISIT(self->last_series);
    return 0;
}

static int
MeteredApp_clear(MeteredApp *self)
{
    Py_CLEAR(self->app);
    Py_CLEAR(self->record);
    Py_CLEAR(self->resolved);
    Py_CLEAR(self->add);
    Py_CLEAR(self->gone);
    Py_CLEAR(self->gauges);
    Py_CLEAR(self->own_keys);
    Py_CLEAR(self->unmatched_key);
    Py_CLEAR(self->route_key);
    Py_CLEAR(self->template_attr);
    Py_CLEAR(self->wanted);
    Py_CLEAR(self->version_key);
    Py_CLEAR(self->usual_version);
    Py_CLEAR(self->other);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->spare);
    Py_CLEAR(self->last_key);
    Py_CLEAR(self->last_series);
    return 0;
}

static void
MeteredApp_dealloc(MeteredApp *self)
{
    PyObject_GC_UnTrack(self);
    MeteredApp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef MeteredApp_members[] = {
    {"app", T_OBJECT, offsetof(MeteredApp, app), READONLY, "The application wrapped."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject MeteredAppType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.MeteredApp",
    .tp_basicsize = sizeof(MeteredApp),
    .tp_dealloc = (destructor)MeteredApp_dealloc,
    .tp_vectorcall_offset = offsetof(MeteredApp, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "MeteredApp(app, record, resolved, add, gone, gauges, index, known, wanted=(), "
              "version=None, other=app): ASGIMetrics in C; a request with a header named in "
              "wanted, or whose version (key, usual value) is not the usual one, goes to "
              "record(); scopes other than http to other().",
    .tp_traverse = (traverseproc)MeteredApp_traverse,
    .tp_clear = (inquiry)MeteredApp_clear,
    .tp_members = MeteredApp_members,
    .tp_new = MeteredApp_new,
};

/* -- the scrape: reads of a mapped file that survive its truncation ---------------------- */

/* A storage file shortened in place (``truncate``) while the metrics process has it mapped
 * makes a read of a page past its new end raise SIGBUS, whose default kills the process: a
 * fault outside the plugin (a foreign process, a damaged disk) must not. So every read of
 * mapped memory here runs under a guard: a SIGBUS handler that, when the faulting address
 * lies in the map being read by this thread, jumps out of the read (``map_read``), which
 * then fails with ``MapFault`` (the reader takes the file as torn). Such a read only copies
 * raw bytes into C buffers: no Python API runs in it and no C state is half updated when
 * the jump leaves it; the Python objects are made after. Any other SIGBUS finds the
 * previous action restored and comes again (a fault re-runs its instruction; a signal
 * sent is raised again), so it kills the process as before, or reaches whoever handled it
 * before us. */
typedef struct {
    sigjmp_buf jump;
    const char *low, *high;   /* the map being read */
} MapGuard;

#if defined(__GNUC__) || defined(__clang__)
/* initial-exec: the handler reads it, and a dynamic TLS access could allocate */
static __thread MapGuard *map_guard __attribute__((tls_model("initial-exec")));
#else
static _Thread_local MapGuard *map_guard;
#endif
static struct sigaction previous_bus;
static int bus_installed;
static PyObject *MapFault;  /* the exception of a read cut short */

/* A worker's stores (the request path's in C, and every Python store of the process) go
 * into its own maps, and a store to a page past the end of a file cut short raises SIGBUS
 * too. Guarding each store would cost every request a sigsetjmp; instead the maps a
 * process writes are registered here (``watch``, by storage/mmap_file.py), and the handler
 * finds the faulting address in one of them, maps private anonymous memory over the map
 * from that page to its end (MAP_FIXED: the addresses stay valid) and returns: the store
 * runs again into that memory, a sink nobody reads, and so does every later store there;
 * stores below the cut still reach the file. Nothing per request: the handler runs only
 * on a fault. The Python side (mmap_file.cut_files, from the sampler) then finds the file
 * shorter than its map, logs it once and counts it. mmap in a handler: a system call that
 * takes no lock of the interrupted thread's (the kernel released its own before it sent
 * the signal). */
#define WATCHED_MAX 4096
static struct {
    _Atomic(uintptr_t) low, high;  /* a writable map of a storage file; 0, 0: a free slot */
} watched[WATCHED_MAX];
static _Atomic(Py_ssize_t) watched_used;  /* slots ever taken: the handler looks below */
static _Atomic(Py_ssize_t) stores_sunk;   /* maps a fault turned into a sink */
static uintptr_t page_size;               /* read before the handler is installed */

/* 1 when ``at`` lay in a watched map, which now has a sink from its page on. */
static int
sink_from(const char *at)
{
    uintptr_t address = (uintptr_t)at;
    Py_ssize_t used = atomic_load(&watched_used);
    for (Py_ssize_t i = 0; i < used; i++) {
        uintptr_t low = atomic_load(&watched[i].low), high = atomic_load(&watched[i].high);
        if (address < low || address >= high)
            continue;
        uintptr_t page = address & ~(page_size - 1);
        if (mmap((void *)page, high - page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
            return 0;
        atomic_fetch_add(&stores_sunk, 1);
        return 1;
    }
    return 0;
}

static void
on_bus(int signum, siginfo_t *info, void *context)
{
    MapGuard *guard = map_guard;
    const char *at = info->si_addr;
    if (guard != NULL && info->si_code > 0 && at >= guard->low && at < guard->high) {
        map_guard = NULL;
        siglongjmp(guard->jump, 1);
    }
    if (info->si_code > 0 && sink_from(at))
        return;  /* the store runs again, into the sink */
    sigaction(SIGBUS, &previous_bus, NULL);
    bus_installed = 0;
    if (info->si_code <= 0)  /* sent (kill, raise): a return would not bring it again */
        raise(signum);
}

/* The handler, installed once per process (the GIL is held: no race); -1 with OSError. */
static int
install_bus_handler(void)
{
    if (bus_installed)
        return 0;
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_bus;
    /* NODEFER: the jump out leaves SIGBUS unblocked without a saved mask to restore */
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous_bus) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    bus_installed = 1;
    return 0;
}

typedef void (*MapReader)(void *job);

/* Runs ``read(job)``, which reads the map ``view`` into C memory only, under the guard:
 * 0, or -1 with MapFault set when the file was found shortened under the map. */
static int
map_read(const Py_buffer *view, MapReader read, void *job)
{
    if (install_bus_handler() < 0)
        return -1;
    MapGuard guard;
    guard.low = view->buf;
    guard.high = guard.low + view->len;
    if (sigsetjmp(guard.jump, 0)) {  /* 0: no signal mask saved, restored (no syscall) */
        PyErr_SetString(MapFault, "the file was shortened while mapped");
        return -1;
    }
    map_guard = &guard;
    atomic_signal_fence(memory_order_seq_cst);  /* the guard is set before the read */
    read(job);
    atomic_signal_fence(memory_order_seq_cst);  /* and cleared after it */
    map_guard = NULL;
    return 0;
}

typedef struct {
    char *to;
    const char *from;
    Py_ssize_t n;
} CopyJob;

static void
copy_job(void *job)
{
    CopyJob *copy = job;
    memcpy(copy->to, copy->from, copy->n);
}

/* header(buffer) -> int: the int32 at the start of a mapped file (its used bytes), read
 * under the guard (MapFault when the file was shortened under the map). */
static PyObject *
header(PyObject *module, PyObject *source)
{
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int32_t used = 0;
    int failed = 0;
    if (view.len < 4) {
        PyErr_SetString(PyExc_ValueError, "header: a buffer shorter than 4 bytes");
        failed = 1;
    }
    else {
        CopyJob job = {(char *)&used, view.buf, 4};
        failed = map_read(&view, copy_job, &job) < 0;
    }
    PyBuffer_Release(&view);
    return failed ? NULL : PyLong_FromLong(used);  /* little-endian, as struct's "<i" */
}

/* The address range of a writable buffer (a storage file's map); -1 with an error. */
static int
writable_range(PyObject *source, uintptr_t *low, uintptr_t *high)
{
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_WRITABLE) < 0)
        return -1;
    *low = (uintptr_t)view.buf;
    *high = *low + (uintptr_t)view.len;
    PyBuffer_Release(&view);
    return 0;
}

/* watch(map) -> bool: stores past the end of the map's file, once cut short, go to a sink
 * instead of killing the process (False: no slot left, left unwatched). */
static PyObject *
watch(PyObject *module, PyObject *source)
{
    uintptr_t low, high;
    if (writable_range(source, &low, &high) < 0 || install_bus_handler() < 0)
        return NULL;
    Py_ssize_t used = atomic_load(&watched_used);
    for (Py_ssize_t i = 0; i <= used && i < WATCHED_MAX; i++) {
        if (i < used && atomic_load(&watched[i].high) != 0)
            continue;
        atomic_store(&watched[i].low, low);  /* the GIL is held: one writer */
        atomic_store(&watched[i].high, high);
        if (i == used)
            atomic_store(&watched_used, used + 1);
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* unwatch(map): before the map is closed (its addresses may be mapped again for another
 * use, which the handler must then leave alone). */
static PyObject *
unwatch(PyObject *module, PyObject *source)
{
    uintptr_t low, high;
    if (writable_range(source, &low, &high) < 0)
        return NULL;
    Py_ssize_t used = atomic_load(&watched_used);
    for (Py_ssize_t i = 0; i < used; i++) {
        if (atomic_load(&watched[i].low) == low && atomic_load(&watched[i].high) == high) {
            atomic_store(&watched[i].high, 0);
            atomic_store(&watched[i].low, 0);
        }
    }
    Py_RETURN_NONE;
}

/* sunk() -> int: the faults of this process's stores that a watched map turned into a sink. */
static PyObject *
sunk(PyObject *module, PyObject *unused)
{
    return PyLong_FromSsize_t(atomic_load(&stores_sunk));
}

/* -- the scrape: a file's key table ------------------------------------------------------ */

/* KeyTable(): the distinct keys of a directory's files, numbered in the order first seen
 * (storage/reader.py KeyTable in C). The files of different workers hold the same keys, so
 * a cold scrape of 64 files x 17,000 entries meets each key 64 times: here each meeting is
 * a hash of the key's bytes where they lie in the map and a compare with the bytes kept
 * from the first meeting, with no Python object made; the text is decoded once per
 * distinct key. A slot holds what a lookup needs (part of the hash, the key's length and
 * where its bytes are kept), so a lookup touches one slot and the kept bytes; the walk
 * (key_table) hashes entries a few ahead and fetches their slots early, since at that
 * size the slots are not in the cache. The hash is a fast one, seeded per table, of 16
 * bytes a step in two lanes (a quarter of the instructions of CPython's SipHash for a
 * 100-byte key);
 * should crafted keys ever make a probe sequence long, the table switches for good to
 * CPython's own hash for bytes (keyed by the interpreter's hash secret), so they collide
 * no more than in a dict. */
typedef struct {
    uint32_t tag;             /* the hash's high 32 bits */
    uint32_t number;          /* the key's number + 1; 0: a free slot */
    uint32_t length;          /* of the key's bytes */
    uint32_t start;           /* where they are in the table's arena */
} KeySlot;

typedef struct {
    PyObject_HEAD
    PyObject *texts;          /* list: each distinct key's text, by number */
    Py_ssize_t count;         /* distinct keys */
    Py_ssize_t id_capacity;
    Py_hash_t *hashes;        /* by number (to lay the slots out again) */
    KeySlot *slots;           /* open addressing, linear probing */
    Py_ssize_t mask;          /* slots - 1 (a power of two, at most half full) */
    char *arena;              /* every key's bytes, one after the other */
    Py_ssize_t arena_used, arena_capacity;
    uint64_t seed;            /* of the fast hash */
    Py_ssize_t long_probe;    /* probes that make the table take CPython's hash */
    int sip;                  /* 1: CPython's hash (a probe sequence was found long) */
} KeyTable;

static inline uint64_t
mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* CPython's hash of ``raw`` as bytes (keyed by the interpreter's hash secret), through
 * public API only: ``Py_HashBuffer`` from 3.14; before, a bytes object's hash (the same
 * value; the private ``_Py_HashBytes`` is not declared by 3.13's headers), an allocation
 * paid only once a table has switched to this hash. Never -1 but on failure (an exception
 * set: the bytes object could not be made). */
static Py_hash_t
sip_hash(const void *raw, Py_ssize_t length)
{
#if PY_VERSION_HEX >= 0x030E0000
    return Py_HashBuffer(raw, length);
#else
    PyObject *bytes = PyBytes_FromStringAndSize(raw, length);
    if (bytes == NULL)
        return -1;
    Py_hash_t hash = PyObject_Hash(bytes);
    Py_DECREF(bytes);
    return hash;
#endif
}

/* The table's hash of a key: -1 with an exception set when CPython's hash failed
 * (``key_hash_failed``). */
static Py_hash_t
key_hash(const KeyTable *table, const char *raw, Py_ssize_t length)
{
    if (table->sip)
        return sip_hash(raw, length);
    uint64_t h = table->seed ^ ((uint64_t)length * 0x9e3779b97f4a7c15ULL);
    uint64_t g = ~table->seed;
    for (; length >= 16; raw += 16, length -= 16) {  /* two lanes: half the latency */
        uint64_t one, two;
        memcpy(&one, raw, 8);
        memcpy(&two, raw + 8, 8);
        h = (h ^ one) * 0xbf58476d1ce4e5b9ULL;
        g = (g ^ two) * 0x94d049bb133111ebULL;
        h ^= h >> 31;
        g ^= g >> 29;
    }
    h ^= mix64(g);
    if (length >= 8) {
        uint64_t word;
        memcpy(&word, raw, 8);
        h = (h ^ word) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
        raw += 8;
        length -= 8;
    }
    if (length > 0) {
        uint64_t word = 0;
        memcpy(&word, raw, length);
        h = (h ^ word) * 0xbf58476d1ce4e5b9ULL;
        h ^= h >> 31;
    }
    return (Py_hash_t)mix64(h);
}

/* Whether ``key_hash`` failed: only CPython's hash fails, and it gives -1 only then (the
 * fast hash may give -1 as a value). */
static inline int
key_hash_failed(const KeyTable *table, Py_hash_t hash)
{
    return table->sip && hash == -1;
}

static inline uint32_t
tag_of(Py_hash_t hash)
{
    return (uint32_t)((uint64_t)hash >> 32);
}

/* The slot where a lookup of ``hash`` starts. */
static inline KeySlot *
first_slot(const KeyTable *self, Py_hash_t hash)
{
    return &self->slots[(size_t)hash & self->mask];
}

/* Slots of ``size``, the keys laid out again by their ``hashes``; with ``sip``, first
 * switched to CPython's hash (every key hashed again). Nothing changes on failure. */
static int
KeyTable_layout(KeyTable *self, Py_ssize_t size, int sip)
{
    KeySlot *slots = PyMem_Calloc(size, sizeof(KeySlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (sip) {  /* every key's CPython hash into a new array, kept only when all are */
        Py_hash_t *hashes = PyMem_Malloc(self->id_capacity * sizeof(Py_hash_t));
        if (hashes == NULL) {
            PyMem_Free(slots);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i <= self->mask; i++) {
            KeySlot slot = self->slots[i];
            if (!slot.number)
                continue;
            Py_hash_t hash = sip_hash(self->arena + slot.start, slot.length);
            if (hash == -1) {
                PyMem_Free(hashes);
                PyMem_Free(slots);
                return -1;
            }
            hashes[slot.number - 1] = hash;
        }
        PyMem_Free(self->hashes);
        self->hashes = hashes;
        self->sip = 1;
    }
    for (Py_ssize_t i = 0; i <= self->mask; i++) {
        KeySlot slot = self->slots[i];
        if (!slot.number)
            continue;
        Py_hash_t hash = self->hashes[slot.number - 1];
        Py_ssize_t at = (size_t)hash & (size - 1);
        while (slots[at].number)
            at = (at + 1) & (size - 1);
        slot.tag = tag_of(hash);
        slots[at] = slot;
    }
    PyMem_Free(self->slots);
    self->slots = slots;
    self->mask = size - 1;
    return 0;
}

/* Room for one more number, its bytes (``length``) and a half-free slot table. */
static int
KeyTable_reserve(KeyTable *self, Py_ssize_t length)
{
    if (self->count >= (Py_ssize_t)UINT32_MAX - 1 || length > (Py_ssize_t)UINT32_MAX
            || self->arena_used + length > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct keys");
        return -1;
    }
    if (self->count == self->id_capacity) {
        Py_ssize_t capacity = 2 * self->id_capacity;
        Py_hash_t *hashes = PyMem_Realloc(self->hashes, capacity * sizeof(Py_hash_t));
        if (hashes == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->hashes = hashes;
        self->id_capacity = capacity;
    }
    if (self->arena_used + length > self->arena_capacity) {
        Py_ssize_t capacity = 2 * self->arena_capacity + length;
        char *arena = PyMem_Realloc(self->arena, capacity);
        if (arena == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->arena = arena;
        self->arena_capacity = capacity;
    }
    if (2 * (self->count + 1) > self->mask + 1)
        return KeyTable_layout(self, 2 * (self->mask + 1), 0);
    return 0;
}

/* The number of the key whose bytes are ``raw``, ``hash`` (key_hash) or any value when
 * ``hashed`` is not the table's ``sip``; numbering (and decoding) the key when new; -1
 * with an exception set on failure. */
static Py_ssize_t
KeyTable_find(KeyTable *self, const char *raw, Py_ssize_t length, Py_hash_t hash, int hashed)
{
    if (hashed != self->sip) {
        hash = key_hash(self, raw, length);
        if (key_hash_failed(self, hash))
            return -1;
    }
    uint32_t tag = tag_of(hash);
    Py_ssize_t at = (size_t)hash & self->mask, probes = 0;
    for (KeySlot *slot; (slot = &self->slots[at])->number; at = (at + 1) & self->mask) {
        if (slot->tag == tag && (Py_ssize_t)slot->length == length  /* never truncated */
                && memcmp(self->arena + slot->start, raw, length) == 0)
            return (Py_ssize_t)slot->number - 1;
        if (++probes >= self->long_probe && !self->sip) {
            if (KeyTable_layout(self, self->mask + 1, 1) < 0)
                return -1;
            return KeyTable_find(self, raw, length, 0, -1);
        }
    }
    if (KeyTable_reserve(self, length) < 0)
        return -1;
    PyObject *text = PyUnicode_DecodeUTF8(raw, length, "replace");
    int failed = text == NULL || PyList_Append(self->texts, text) < 0;
    Py_XDECREF(text);
    if (failed)
        return -1;
    Py_ssize_t id = self->count++;
    self->hashes[id] = hash;
    at = (size_t)hash & self->mask;  /* the slots may have been laid out again */
    while (self->slots[at].number)
        at = (at + 1) & self->mask;
    self->slots[at] = (KeySlot){tag, (uint32_t)id + 1, (uint32_t)length,
                                (uint32_t)self->arena_used};
    memcpy(self->arena + self->arena_used, raw, length);
    self->arena_used += length;
    return id;
}

static Py_ssize_t
KeyTable_number(KeyTable *self, const char *raw, Py_ssize_t length)
{
    return KeyTable_find(self, raw, length, 0, -1);
}

static PyObject *
KeyTable_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* at most half full, 256 probes do not happen by chance with a hash that mixes */
    Py_ssize_t long_probe = 256;
    static char *names[] = {"long_probe", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n:KeyTable", names, &long_probe))
        return NULL;
    KeyTable *self = (KeyTable *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->long_probe = long_probe < 1 ? 1 : long_probe;
    self->id_capacity = 64;
    self->mask = 127;
    self->texts = PyList_New(0);
    self->hashes = PyMem_Malloc(self->id_capacity * sizeof(Py_hash_t));
    self->slots = PyMem_Calloc(self->mask + 1, sizeof(KeySlot));
    /* never NULL: an empty key (table[b""]) is kept, compared and copied at its start */
    self->arena_capacity = 4096;
    self->arena = PyMem_Malloc(self->arena_capacity);
    /* seeded by the interpreter's hash secret (and where the table lies) */
    KeyTable *where = self;
    Py_hash_t seed = sip_hash(&where, sizeof(where));
    self->seed = mix64((uint64_t)seed);
    if (seed == -1 || self->texts == NULL || self->hashes == NULL || self->slots == NULL
            || self->arena == NULL) {
        Py_DECREF(self);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
KeyTable_dealloc(KeyTable *self)
{
    Py_XDECREF(self->texts);
    PyMem_Free(self->hashes);
    PyMem_Free(self->slots);
    PyMem_Free(self->arena);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* table[raw]: the number of the key whose bytes are ``raw`` (numbered when new). */
static PyObject *
KeyTable_subscript(KeyTable *self, PyObject *raw)
{
    Py_buffer view;
    if (PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t id = KeyTable_number(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return id < 0 ? NULL : PyLong_FromSsize_t(id);
}

static Py_ssize_t
KeyTable_length(KeyTable *self)
{
    return self->count;
}

static PyMappingMethods KeyTable_as_mapping = {
    .mp_length = (lenfunc)KeyTable_length,
    .mp_subscript = (binaryfunc)KeyTable_subscript,
};

static PyMemberDef KeyTable_members[] = {
    {"texts", T_OBJECT, offsetof(KeyTable, texts), READONLY,
     "Each distinct key's text, by number."},
    {"sip", T_INT, offsetof(KeyTable, sip), READONLY,
     "1 once a long probe sequence made the table take CPython's hash for bytes."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject KeyTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gunicorn_prometheus_exporter._speedups.KeyTable",
    .tp_basicsize = sizeof(KeyTable),
    .tp_dealloc = (destructor)KeyTable_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyTable(long_probe=256): storage.reader.KeyTable in C: table[raw] "
              "numbers the key whose bytes are raw; the keys' bytes kept and "
              "hashed here, with CPython's hash for bytes once a lookup probes long_probe "
              "slots.",
    .tp_members = KeyTable_members,
    .tp_as_mapping = &KeyTable_as_mapping,
    .tp_new = KeyTable_new,
};

/* Appends ``n`` bytes to a growing buffer; -1 (MemoryError set) on failure. */
static int
grow_append(char **buffer, Py_ssize_t *used, Py_ssize_t *capacity, const void *bytes,
            Py_ssize_t n)
{
    if (*used + n > *capacity) {
        Py_ssize_t wanted = 2 * *capacity + n;
        char *grown = PyMem_Realloc(*buffer, wanted);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *buffer = grown;
        *capacity = wanted;
    }
    memcpy(*buffer + *used, bytes, n);
    *used += n;
    return 0;
}

/* Entries the walk hashes ahead of their lookup: enough to cover the time a slot takes
 * to come from memory. */
#define KEY_TABLE_AHEAD 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

/* Key bytes plus the 1 to 8 spaces that align the value after them (mmap_file.py
 * padded_length), for a length of an int32 field. */
static inline Py_ssize_t
padded_length(Py_ssize_t length)
{
    return length + (8 - (length + 4) % 8);
}

/* key_table(buffer, pos, used, payload, table) -> (ids, offsets, pos, torn):
 * storage/reader.py FileReader._parse for a fixed payload, in one call. Walks the entries
 * from ``pos`` to ``used`` (each: int32 key length, key, 1 to 8 spaces, ``payload`` bytes)
 * and gives each key's number in ``table`` (a KeyTable, whose ``texts`` has the key's text
 * by number) as the bytes of an array('i'), each payload's offset as the bytes of an
 * array('q'), where the walk stopped, and whether it stopped at a torn entry. A cold
 * scrape walks a million entries: per entry this makes no Python object (not even a
 * list's reference to the key's text: FileReader.keys is a view of the numbers). */
static PyObject *
key_table(PyObject *module, PyObject *args)
{
    PyObject *source;
    KeyTable *table;
    Py_ssize_t pos, used, payload;
    if (!PyArg_ParseTuple(args, "OnnnO!:key_table", &source, &pos, &used, &payload,
                          &KeyTableType, &table))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t limit = used < view.len ? used : view.len;
    PyObject *result = NULL;
    /* the bytes from ``pos`` to ``limit``, copied under the guard (map_read): the walk
     * below runs Python (the texts of new keys) and reads only this copy */
    Py_ssize_t origin = pos < 0 ? 0 : pos < limit ? pos : limit;
    char *copy = PyMem_Malloc(limit - origin + 1);
    if (copy == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    CopyJob job = {copy, (const char *)view.buf + origin, limit - origin};
    if (map_read(&view, copy_job, &job) < 0) {
        PyBuffer_Release(&view);
        PyMem_Free(copy);
        return NULL;
    }
    char *ids = NULL, *offsets = NULL;
    Py_ssize_t ids_used = 0, ids_capacity = 0, offsets_used = 0, offsets_capacity = 0;
    int torn = 0;
    /* entries hashed ahead of their lookup, their slots fetched meanwhile */
    struct { Py_ssize_t pos, length; Py_hash_t hash; int sip; } ahead[KEY_TABLE_AHEAD];
    int first = 0, waiting = 0, stopped = 0;
    Py_ssize_t scan = pos;
    for (;;) {
        while (waiting < KEY_TABLE_AHEAD && !stopped) {
            if (scan < 0 || scan + 4 > used) {
                stopped = 1;
                break;
            }
            /* an entry the header counts but the file does not hold: torn, as the Python
             * walk says (a file shorter than its header) */
            int32_t length = 0;
            if (scan + 4 <= limit)  /* scan >= origin: the walk starts there and only goes on */
                memcpy(&length, copy + (scan - origin), 4);  /* little-endian everywhere we build */
            /* in Py_ssize_t: length + 4 overflows an int32 for a length near INT32_MAX */
            Py_ssize_t offset = scan + 4 + padded_length(length);
            if (length <= 0 || scan + 4 + length > limit || payload < 8 || payload > limit
                    || offset > limit - payload) {
                stopped = torn = 1;
                break;
            }
            int at = (first + waiting++) % KEY_TABLE_AHEAD;
            ahead[at].pos = scan;
            ahead[at].length = length;
            ahead[at].sip = table->sip;
            ahead[at].hash = key_hash(table, copy + (scan - origin) + 4, length);
            if (key_hash_failed(table, ahead[at].hash))
                goto done;
            PREFETCH(first_slot(table, ahead[at].hash));
            scan = offset + payload;
        }
        if (!waiting)
            break;
        Py_ssize_t at = ahead[first].pos, length = ahead[first].length;
        Py_ssize_t id = KeyTable_find(table, copy + (at - origin) + 4, length, ahead[first].hash,
                                      ahead[first].sip);
        first = (first + 1) % KEY_TABLE_AHEAD;
        if (--waiting) {  /* the next key's kept bytes, whose slot should be here by now */
            KeySlot *next = first_slot(table, ahead[first].hash);
            if (next->number && next->tag == tag_of(ahead[first].hash))
                PREFETCH(table->arena + next->start);
        }
        if (id < 0)
            goto done;
        int number = (int)id;
        long long offset = at + 4 + padded_length(length);
        if (grow_append(&ids, &ids_used, &ids_capacity, &number, sizeof(number)) < 0
                || grow_append(&offsets, &offsets_used, &offsets_capacity, &offset,
                               sizeof(offset)) < 0)
            goto done;
        pos = offset + payload;
    }
    result = Py_BuildValue("(y#y#nO)", ids == NULL ? "" : ids, ids_used,
                           offsets == NULL ? "" : offsets, offsets_used, pos,
                           torn ? Py_True : Py_False);
done:
    PyBuffer_Release(&view);
    PyMem_Free(copy);
    PyMem_Free(ids);
    PyMem_Free(offsets);
    return result;
}

typedef struct {
    double *to;
    const char *from;
    const long long *offsets;
    Py_ssize_t count, per;
} GatherJob;

/* The ``per`` doubles at each offset, one after the other (little-endian, as "<d"); each
 * double a copy of a constant 8 bytes (one aligned 8-byte load, no call to memcpy): a
 * writer may store it meanwhile, and a wider or byte-wise copy could mix two values. */
static void
gather_job(void *job)
{
    GatherJob *gather = job;
    double *to = gather->to;
    const char *from = gather->from;
    const long long *offsets = gather->offsets;
    if (gather->per == 1) {
        for (Py_ssize_t i = 0; i < gather->count; i++)
            memcpy(to + i, from + offsets[i], 8);
        return;
    }
    for (Py_ssize_t i = 0; i < gather->count; i++) {
        memcpy(to + 2 * i, from + offsets[i], 8);
        memcpy(to + 2 * i + 1, from + offsets[i] + 8, 8);
    }
}

/* The array('q') of byte offsets ``positions`` as ``at``, each checked to leave ``width``
 * bytes of a buffer of ``len`` bytes after it (no overflow): 0, or -1 with an exception
 * (``at`` released) naming ``name``. */
static int
get_offsets(PyObject *positions, Py_buffer *at, Py_ssize_t len, Py_ssize_t width,
            const char *name)
{
    if (PyObject_GetBuffer(positions, at, PyBUF_FORMAT) < 0)
        return -1;
    if (at->itemsize != sizeof(long long) || at->format == NULL || strcmp(at->format, "q") != 0) {
        PyErr_Format(PyExc_TypeError, "%s: offsets must be an array('q')", name);
        PyBuffer_Release(at);
        return -1;
    }
    const long long *offsets = at->buf;
    Py_ssize_t count = at->len / (Py_ssize_t)sizeof(long long);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (offsets[i] < 0 || offsets[i] > len - width) {
            PyErr_Format(PyExc_ValueError, "%s: an offset beyond the buffer", name);
            PyBuffer_Release(at);
            return -1;
        }
    }
    return 0;
}

/* values(buffer, offsets, per) -> tuple: the ``per`` (1, or 2 with a timestamp) doubles at
 * each offset of the array('q') ``offsets``, in order: what the struct of FileReader._format
 * unpacks, without a format to build for a million entries on a cold scrape. */
static PyObject *
values(PyObject *module, PyObject *args)
{
    PyObject *source, *positions;
    Py_ssize_t per;
    if (!PyArg_ParseTuple(args, "OOn:values", &source, &positions, &per))
        return NULL;
    if (per != 1 && per != 2) {
        PyErr_SetString(PyExc_ValueError, "values: per must be 1 or 2");
        return NULL;
    }
    Py_buffer view, at;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (get_offsets(positions, &at, view.len, 8 * per, "values") < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *out = NULL;
    const long long *offsets = at.buf;
    Py_ssize_t count = at.len / (Py_ssize_t)sizeof(long long);
    /* the doubles read under the guard (map_read) into C memory, the floats made after */
    double *got = PyMem_Malloc((count * per + 1) * sizeof(double));
    if (got == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    GatherJob job = {got, view.buf, offsets, count, per};
    if (map_read(&view, gather_job, &job) < 0)
        goto done;
    out = PyTuple_New(count * per);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count * per; i++) {
        PyObject *number = PyFloat_FromDouble(got[i]);
        if (number == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyTuple_SET_ITEM(out, i, number);
    }
done:
    PyMem_Free(got);
    PyBuffer_Release(&at);
    PyBuffer_Release(&view);
    return out;
}

/* copy(buffer, start, stop) -> bytes: ``buffer[start:stop]`` (offsets not negative, cut to
 * the buffer as a slice's are) copied under the guard, MapFault when the file was found
 * shortened under the map. What the compiled path reads of a native histogram file's map
 * besides its values: the new entries for the Python walk (storage/reader.py, whose payload
 * a key sizes) and each series' buckets, to tell those in use (storage/native.py). A plain
 * ``memcpy``: never for a value a writer may be storing meanwhile (``values`` loads each
 * double whole), only for keys and lengths (written before the header counts them) and for
 * zero against not zero. */
static PyObject *
copy_bytes(PyObject *module, PyObject *args)
{
    PyObject *source;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "Onn:copy", &source, &start, &stop))
        return NULL;
    if (start < 0 || stop < 0) {
        PyErr_SetString(PyExc_ValueError, "copy: a negative offset");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    stop = stop < view.len ? stop : view.len;
    start = start < stop ? start : stop;
    /* made before the read: nothing but the copy runs under the guard */
    PyObject *out = PyBytes_FromStringAndSize(NULL, stop - start);
    if (out != NULL) {
        CopyJob job = {PyBytes_AS_STRING(out), (const char *)view.buf + start, stop - start};
        if (map_read(&view, copy_job, &job) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&view);
    return out;
}

typedef struct {
    char *to;
    const char *from;
    const long long *offsets;
    Py_ssize_t count, size;
} StampedJob;

/* Each ``size``-byte slot as [its stamp][the rest][its stamp read again]: the stamp (the
 * slot's first double, one 8-byte load) is read before the rest and again after it. Its
 * writer zeroes the stamp, writes the rest, then the new stamp, so a slot rewritten while
 * copied shows two different stamps. The fences keep the three reads in that order (for
 * the compiler everywhere, for the CPU where loads may pass loads: none on x86); a plain
 * ``memcpy`` of the whole slot may load its bytes in any order. */
static void
stamped_job(void *job)
{
    StampedJob *stamped = job;
    char *to = stamped->to;
    Py_ssize_t rest = stamped->size - 8;
    for (Py_ssize_t i = 0; i < stamped->count; i++) {
        const char *slot = stamped->from + stamped->offsets[i];
        memcpy(to, slot, 8);
        atomic_thread_fence(memory_order_acquire);
        memcpy(to + 8, slot + 8, rest);
        atomic_thread_fence(memory_order_acquire);
        memcpy(to + 8 + rest, slot, 8);
        to += stamped->size + 8;
    }
}

/* stamped(buffer, offsets, size) -> bytes: for each offset of the array('q') ``offsets``,
 * the ``size`` bytes of the slot there followed by its first double read again (``size +
 * 8`` bytes a slot, stamped_job), copied under the guard (MapFault: shortened): the
 * exemplar slots of storage/exemplars.py, which take a slot only when both stamps agree. */
static PyObject *
stamped(PyObject *module, PyObject *args)
{
    PyObject *source, *positions;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "OOn:stamped", &source, &positions, &size))
        return NULL;
    if (size < 8 || size > 4096) {
        PyErr_SetString(PyExc_ValueError, "stamped: size must be 8 to 4096");
        return NULL;
    }
    Py_buffer view, at;
    if (PyObject_GetBuffer(source, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (get_offsets(positions, &at, view.len, size, "stamped") < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t count = at.len / (Py_ssize_t)sizeof(long long);
    PyObject *out = NULL;
    if (count > PY_SSIZE_T_MAX / (size + 8))
        PyErr_NoMemory();
    else
        out = PyBytes_FromStringAndSize(NULL, count * (size + 8));  /* made before the read */
    if (out != NULL) {
        StampedJob job = {PyBytes_AS_STRING(out), view.buf, at.buf, count, size};
        if (map_read(&view, stamped_job, &job) < 0)
            Py_CLEAR(out);
    }
    PyBuffer_Release(&at);
    PyBuffer_Release(&view);
    return out;
}

/* pick(column, ids, start) -> (list, missing): ``column[i]`` for each number ``i`` of the
 * array('i') ``ids`` from ``start`` on, the list ``column`` first grown with None to hold
 * every such number, and how many of those are None (collector.py pick in C: the series
 * numbers of a file's keys, known or None). */
static PyObject *
pick(PyObject *module, PyObject *args)
{
    PyObject *column, *source;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!On:pick", &PyList_Type, &column, &source, &start))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *out = NULL, *result = NULL;
    Py_ssize_t missing = 0;
    if (view.itemsize != sizeof(int) || view.format == NULL || strcmp(view.format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "pick: ids must be an array('i')");
        goto done;
    }
    const int *ids = view.buf;
    Py_ssize_t count = view.len / (Py_ssize_t)sizeof(int);
    if (start < 0)
        start = 0;
    int top = -1;
    for (Py_ssize_t i = start; i < count; i++) {
        if (ids[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "pick: a negative key number");
            goto done;
        }
        if (ids[i] > top)
            top = ids[i];
    }
    /* made before ``column`` is grown: a list is an object the cyclic GC tracks, whose
     * allocation may run a collection, and with it code that could shrink ``column``
     * between its growth and the reads below (growing it allocates no such object) */
    out = PyList_New(count > start ? count - start : 0);
    if (out == NULL)
        goto done;
    while (PyList_GET_SIZE(column) <= top) {
        if (PyList_Append(column, Py_None) < 0)
            goto done;
    }
    int atomic = 1;
    for (Py_ssize_t i = start; i < count; i++) {
        PyObject *found = PyList_GET_ITEM(column, ids[i]);
        missing += found == Py_None;
        atomic &= found == Py_None || PyLong_CheckExact(found);
        Py_INCREF(found);
        PyList_SET_ITEM(out, i - start, found);
    }
    /* a list of ints and None (series numbers: a shard's ``targets``, a million entries
     * on a cold scrape) can be part of no reference cycle, and the collector only ever
     * puts ints in it: untracked, the cyclic GC does not visit each entry at each of its
     * passes (as it leaves a tuple or dict of such values untracked itself) */
    if (atomic)
        PyObject_GC_UnTrack(out);
    result = Py_BuildValue("(On)", out, missing);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(out);
    return result;
}

/* derived(templates, own, numbers, start) -> list: ``(own[t], numbers[start + i])`` for
 * each ``t`` of the list ``templates`` (the ``Template`` number of each key, or None) that
 * is not None, in order (collector.py derived in C: a worker's derived series and the
 * positions of the values that feed them; ``numbers`` is ``list(range(n))``, so that the
 * positions of every shard are the same int objects, not 2.7 million new ones on a cold
 * scrape of 64 workers). The pairs hold two ints and the list only such pairs: none can
 * be part of a reference cycle, so both are untracked at once (a cold scrape of 64
 * workers' request files makes 2.8 million pairs, which the cyclic GC would otherwise
 * visit at each of its passes until they reach its oldest generation, and then at every
 * full pass). */
static PyObject *
derived_pairs(PyObject *module, PyObject *args)
{
    PyObject *templates, *own, *numbers;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!O!O!n:derived", &PyList_Type, &templates, &PyDict_Type,
                          &own, &PyList_Type, &numbers, &start))
        return NULL;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "derived: a negative start");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int atomic = 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(templates); i++) {
        PyObject *template = PyList_GET_ITEM(templates, i);
        if (template == Py_None)
            continue;
        Py_INCREF(template);
        PyObject *sid = PyDict_GetItemWithError(own, template);  /* borrowed */
        if (sid == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, template);
            Py_DECREF(template);
            goto fail;
        }
        Py_DECREF(template);
        if (start + i >= PyList_GET_SIZE(numbers)) {
            PyErr_SetString(PyExc_IndexError, "derived: numbers too short");
            goto fail;
        }
        PyObject *position = PyList_GET_ITEM(numbers, start + i);
        Py_INCREF(sid);
        Py_INCREF(position);
        PyObject *pair = PyTuple_Pack(2, sid, position);
        if (pair != NULL && PyLong_CheckExact(sid) && PyLong_CheckExact(position))
            PyObject_GC_UnTrack(pair);
        else
            atomic = 0;
        Py_DECREF(position);
        Py_DECREF(sid);
        if (pair == NULL)
            goto fail;
        int appended = PyList_Append(out, pair);
        Py_DECREF(pair);
        if (appended < 0)
            goto fail;
    }
    if (atomic)
        PyObject_GC_UnTrack(out);
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* key_set(ids) -> bytes: the set of numbers in the array('i') ``ids`` as a bitmap (bit
 * ``i % 8`` of byte ``i / 8``, as long as the largest needs): equal for two files that
 * hold the same keys in any order (collector.py Merger.index shares their set of series). */
static PyObject *
key_set(PyObject *module, PyObject *source)
{
    Py_buffer view;
    if (PyObject_GetBuffer(source, &view, PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *out = NULL;
    if (view.itemsize != sizeof(int) || view.format == NULL || strcmp(view.format, "i") != 0) {
        PyErr_SetString(PyExc_TypeError, "key_set: ids must be an array('i')");
        goto done;
    }
    const int *ids = view.buf;
    Py_ssize_t count = view.len / (Py_ssize_t)sizeof(int);
    int top = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (ids[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "key_set: a negative key number");
            goto done;
        }
        if (ids[i] > top)
            top = ids[i];
    }
    out = PyBytes_FromStringAndSize(NULL, top / 8 + 1);
    if (out == NULL)
        goto done;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    memset(bits, 0, top / 8 + 1);
    for (Py_ssize_t i = 0; i < count; i++)
        bits[ids[i] / 8] |= (unsigned char)(1u << (ids[i] % 8));
done:
    PyBuffer_Release(&view);
    return out;
}

/* -- the scrape: a key's parts ----------------------------------------------------------- */

/* A key of prometheus_client's file format is the JSON of [family, sample, {labels},
 * help] as json.dumps writes it (ASCII, sort_keys). A cold scrape decodes each distinct
 * key once (17,000 at 64 files x 1,000 label sets); json's scanner makes a list, a dict
 * and, in collector.py, a sorted tuple of its items, several Python steps a key. */

/* Skips JSON whitespace. */
static inline const char *
json_space(const char *at, const char *end)
{
    while (at < end && (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r'))
        at++;
    return at;
}

/* Strings parse_key made lately, by a hash of their text: the keys of a directory repeat
 * their family, sample, help, label names and bucket bounds (at 64 x 1,000 label sets,
 * six of a key's seven strings), so a cold scrape makes each of those once instead of once
 * per key: fewer allocations, and 6 MB less in the series registry. Two slots per hash
 * (the newer first), so two strings of one hash that keys keep repeating both stay; a
 * string met once (a route) pushes out the older only. GIL held: no lock. */
#define KEY_STRINGS 1024
static PyObject *key_strings[KEY_STRINGS];

/* Whether ``kept`` is the str of the ``n`` ASCII characters at ``text``. */
static inline int
key_string_is(PyObject *kept, const char *text, Py_ssize_t n)
{
    return kept != NULL && PyUnicode_GET_LENGTH(kept) == n
           && memcmp(PyUnicode_DATA(kept), text, n) == 0;
}

/* The str of the ``n`` ASCII characters at ``text``, made or one kept (a new reference). */
static PyObject *
key_string(const char *text, Py_ssize_t n)
{
    uint32_t hash = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        hash = (hash ^ (unsigned char)text[i]) * 16777619u;
    PyObject **pair = &key_strings[2 * ((hash ^ (hash >> 16)) % (KEY_STRINGS / 2))];
    if (key_string_is(pair[0], text, n))
        return Py_NewRef(pair[0]);
    if (key_string_is(pair[1], text, n))
        return Py_NewRef(pair[1]);
    PyObject *made = PyUnicode_FromStringAndSize(text, n);
    if (made != NULL && PyUnicode_IS_COMPACT_ASCII(made)) {
        Py_XDECREF(pair[1]);
        pair[1] = pair[0];
        pair[0] = Py_NewRef(made);
    }
    return made;
}

/* The JSON string at ``*at`` (past its closing quote after), or NULL without an exception
 * for anything but a plain one (an escape or a control character: left to json). */
static PyObject *
json_plain_string(const char **at, const char *end)
{
    const char *p = json_space(*at, end);
    if (p >= end || *p != '"')
        return NULL;
    const char *start = ++p;
    while (p < end && *p != '"') {
        if (*p == '\\' || (unsigned char)*p < 0x20)
            return NULL;
        p++;
    }
    if (p >= end)
        return NULL;
    *at = p + 1;
    return key_string(start, p - start);
}

/* Whether the next non-space character is ``c`` (then past it). */
static inline int
json_expect(const char **at, const char *end, char c)
{
    const char *p = json_space(*at, end);
    if (p >= end || *p != c)
        return 0;
    *at = p + 1;
    return 1;
}

/* The labels object at ``*at`` as a sorted tuple of (name, value) pairs; NULL without an
 * exception for anything but an object of plain strings with distinct names. */
static PyObject *
json_plain_labels(const char **at, const char *end)
{
    if (!json_expect(at, end, '{'))
        return NULL;
    PyObject *pairs = PyList_New(0), *out = NULL;
    if (pairs == NULL)
        return NULL;
    if (json_expect(at, end, '}'))
        goto sorted;
    do {
        PyObject *name = json_plain_string(at, end), *value = NULL, *pair = NULL;
        if (name != NULL && json_expect(at, end, ':'))
            value = json_plain_string(at, end);
        if (value != NULL && (pair = PyTuple_Pack(2, name, value)) != NULL)
            PyObject_GC_UnTrack(pair);  /* of strings: see parse_key */
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL || PyList_Append(pairs, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    } while (json_expect(at, end, ','));
    if (!json_expect(at, end, '}'))
        goto done;
sorted:
    if (PyList_Sort(pairs) < 0)
        goto done;
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(pairs); i++) {  /* json keeps the last */
        int same = PyUnicode_Compare(PyTuple_GET_ITEM(PyList_GET_ITEM(pairs, i - 1), 0),
                                     PyTuple_GET_ITEM(PyList_GET_ITEM(pairs, i), 0)) == 0;
        if (same)
            goto done;
    }
    if ((out = PyList_AsTuple(pairs)) != NULL)
        PyObject_GC_UnTrack(out);
done:
    Py_DECREF(pairs);
    return out;
}

/* parse_key(text) -> (family, sample, labels, help) or None: collector.py Merger._parse_key
 * for an ASCII key of plain strings (labels a tuple of (name, value) pairs sorted); None
 * for any other key (escapes, numbers, repeated label names, not this shape), which the
 * Python path parses as it always did. The tuples, of strings only, are made untracked by
 * the cyclic GC, as its first pass over them would make them: the pass that follows a
 * cold scrape need not visit 70,000 of them. */
static PyObject *
parse_key(PyObject *module, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "parse_key: a str is needed");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text))
        Py_RETURN_NONE;
    const char *at = (const char *)PyUnicode_DATA(text);
    const char *end = at + PyUnicode_GET_LENGTH(text);
    PyObject *family = NULL, *sample = NULL, *labels = NULL, *help = NULL, *out = NULL;
    if (json_expect(&at, end, '[') && (family = json_plain_string(&at, end)) != NULL
            && json_expect(&at, end, ',') && (sample = json_plain_string(&at, end)) != NULL
            && json_expect(&at, end, ',') && (labels = json_plain_labels(&at, end)) != NULL
            && json_expect(&at, end, ',') && (help = json_plain_string(&at, end)) != NULL
            && json_expect(&at, end, ']') && json_space(at, end) == end)
        out = PyTuple_Pack(4, family, sample, labels, help);
    if (out != NULL)
        PyObject_GC_UnTrack(out);
    Py_XDECREF(family);
    Py_XDECREF(sample);
    Py_XDECREF(labels);
    Py_XDECREF(help);
    if (out == NULL && !PyErr_Occurred())
        Py_RETURN_NONE;
    return out;
}

/* -- the scrape: a new series numbered ------------------------------------------------- */

/* collector.py SeriesRegistry's attributes and a histogram group's keys */
static PyObject *s_ids, *s_keys, *s_label_dicts, *s_family_of, *s_histogram_ids;
static PyObject *s_histograms, *s_buckets, *s_sum, *s_labels, *s_native, *s_ordered, *s_le;
static PyObject *s_inf_label, *s_add, *s_bucket_label, *s_empty;

/* Untracks ``tuple`` by the cyclic GC when nothing it holds is tracked (it can then be in
 * no cycle), as the GC's first pass over it would: the pass after a cold scrape need not
 * visit the tens of thousands of tuples of a new series registry. Returns ``tuple``. */
static PyObject *
untrack_atomic(PyObject *tuple)
{
    if (tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyObject_IS_GC(item) && PyObject_GC_IsTracked(item))
            return tuple;
    }
    PyObject_GC_UnTrack(tuple);
    return tuple;
}

/* Whether the str ``text`` ends with the ASCII ``suffix``. */
static int
ends_with(PyObject *text, const char *suffix)
{
    Py_ssize_t n = (Py_ssize_t)strlen(suffix), length = PyUnicode_GET_LENGTH(text);
    if (length < n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyUnicode_READ_CHAR(text, length - n + i) != (Py_UCS4)(unsigned char)suffix[i])
            return 0;
    }
    return 1;
}

/* The tuple of ``labels``'s pairs whose name is not in ``not_base`` (a histogram's labels
 * without its bucket's). */
static PyObject *
base_labels(PyObject *labels, PyObject *not_base)
{
    PyObject *kept = PyList_New(0), *out = NULL;
    if (kept == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(labels); i++) {
        PyObject *pair = PyTuple_GET_ITEM(labels, i);
        PyObject *name = PySequence_GetItem(pair, 0);
        int skip = name == NULL ? -1 : PySequence_Contains(not_base, name);
        Py_XDECREF(name);
        if (skip < 0 || (!skip && PyList_Append(kept, pair) < 0))
            goto done;
    }
    out = untrack_atomic(PyList_AsTuple(kept));
done:
    Py_DECREF(kept);
    return out;
}

/* What a histogram sample is to its group (index_histogram). */
enum { SAMPLE_SUM, SAMPLE_BUCKET, SAMPLE_NATIVE };

/* A native histogram's virtual bucket numbered ``sid``: ``(parse_bucket(label), sid)``
 * appended to the group's "native" list, where its ``__native__`` label (or "") names a
 * bucket (SeriesRegistry._index_histogram). The label is parsed by the Python
 * ``native.parse_bucket`` itself, so that both paths take exactly the same labels. */
static int
index_native(PyObject *group, PyObject *label_dict, PyObject *sid, PyObject *parse_bucket)
{
    PyObject *label = PyDict_GetItemWithError(label_dict, s_bucket_label);
    if (label == NULL && PyErr_Occurred())
        return -1;
    PyObject *bucket = PyObject_CallOneArg(parse_bucket, label != NULL ? label : s_empty);
    if (bucket == NULL)
        return -1;
    int result = 0;
    if (bucket != Py_None) {
        PyObject *entry = untrack_atomic(PyTuple_Pack(2, bucket, sid));
        PyObject *list = entry == NULL ? NULL : PyDict_GetItemWithError(group, s_native);
        result = list != NULL ? PyList_Append(list, entry) : -1;
        if (list == NULL && entry != NULL && !PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, s_native);
        Py_XDECREF(entry);
    }
    Py_DECREF(bucket);
    return result;
}

/* A histogram's bucket, sum or native bucket, numbered ``sid``, in its group of
 * ``registry.histograms`` (SeriesRegistry._index_histogram). */
static int
index_histogram(PyObject *histograms, PyObject *not_base, PyObject *family, PyObject *labels,
                PyObject *label_dict, PyObject *sid, int kind, PyObject *parse_bucket)
{
    PyObject *base = base_labels(labels, not_base), *where = NULL, *group = NULL;
    int result = -1;
    if (base == NULL || (where = untrack_atomic(PyTuple_Pack(2, family, base))) == NULL)
        goto done;
    group = PyDict_GetItemWithError(histograms, where);
    if (group != NULL) {
        Py_INCREF(group);
    } else {
        if (PyErr_Occurred())
            goto done;
        PyObject *buckets = PyList_New(0), *natives = PyList_New(0), *fixed = PyDict_New();
        if (buckets != NULL && natives != NULL && fixed != NULL
                && PyDict_MergeFromSeq2(fixed, base, 1) == 0)
            group = Py_BuildValue("{OOOOOOOOOO}", s_buckets, buckets, s_sum, Py_None,
                                  s_labels, fixed, s_native, natives, s_ordered, Py_True);
        Py_XDECREF(buckets);
        Py_XDECREF(natives);
        Py_XDECREF(fixed);
        if (group == NULL || PyDict_SetItem(histograms, where, group) < 0)
            goto done;
    }
    if (kind == SAMPLE_NATIVE) {
        result = index_native(group, label_dict, sid, parse_bucket);
        goto done;
    }
    if (kind == SAMPLE_SUM) {
        result = PyDict_SetItem(group, s_sum, sid);
        goto done;
    }
    PyObject *le = PyDict_GetItemWithError(label_dict, s_le);
    if (le == NULL && PyErr_Occurred())
        goto done;
    le = le != NULL ? le : s_inf_label;
    PyObject *bound = PyNumber_Float(le);  /* _bound: float(le), +inf where it is none */
    if (bound == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        bound = PyFloat_FromDouble(Py_HUGE_VAL);
    }
    PyObject *entry = bound == NULL ? NULL : untrack_atomic(PyTuple_Pack(3, bound, le, sid));
    /* looked up only without an exception pending (one from float() or the tuple) */
    PyObject *list = entry == NULL ? NULL : PyDict_GetItemWithError(group, s_buckets);
    if (list != NULL && PyList_Append(list, entry) == 0)
        result = PyDict_SetItem(group, s_ordered, Py_False);
    else if (list == NULL && !PyErr_Occurred())
        PyErr_SetObject(PyExc_KeyError, s_buckets);
    Py_XDECREF(bound);
    Py_XDECREF(entry);
done:
    Py_XDECREF(base);
    Py_XDECREF(where);
    Py_XDECREF(group);
    return result;
}

/* register(registry, not_base, parse_bucket, family, typ, help, sample, labels) -> int:
 * collector.py SeriesRegistry.add in one call: the number of the series (family, sample,
 * labels), a new one numbered with its label dict and, for a histogram's bucket, sum or
 * native bucket (a sample ending in _native, its bucket named by ``parse_bucket`` of its
 * ``__native__`` label), its place in the histogram's group (labels named in ``not_base``
 * are the bucket's), its tuples untracked where they can be. A cold scrape numbers 17,000
 * series at 64 files x 1,000 label sets, and some 6,000 native buckets at 16 workers x
 * 100 routes; in Python each is some hundred steps. Any other histogram sample (_count,
 * anything but _bucket, _sum and _native) is left to ``registry.add``. */
static PyObject *
register_series(PyObject *module, PyObject *args)
{
    PyObject *registry, *not_base, *parse_bucket, *family, *typ, *help, *sample, *labels;
    if (!PyArg_ParseTuple(args, "OOOOOOOO!:register", &registry, &not_base, &parse_bucket,
                          &family, &typ, &help, &sample, &PyTuple_Type, &labels))
        return NULL;
    int histogram = PyUnicode_Check(typ) && PyUnicode_CompareWithASCIIString(typ, "histogram") == 0;
    int kind = SAMPLE_SUM;
    if (histogram) {
        if (!PyUnicode_Check(sample))
            return PyObject_CallMethodObjArgs(registry, s_add, family, typ, help, sample,
                                              labels, NULL);
        if (ends_with(sample, "_bucket"))
            kind = SAMPLE_BUCKET;
        else if (ends_with(sample, "_native"))
            kind = SAMPLE_NATIVE;
        else if (!ends_with(sample, "_sum"))
            return PyObject_CallMethodObjArgs(registry, s_add, family, typ, help, sample,
                                              labels, NULL);
    }
    PyObject *ids = PyObject_GetAttr(registry, s_ids), *keys = NULL, *label_dicts = NULL;
    PyObject *family_of = NULL, *key = NULL, *sid = NULL, *label_dict = NULL, *out = NULL;
    if (ids == NULL || (keys = PyObject_GetAttr(registry, s_keys)) == NULL
            || (label_dicts = PyObject_GetAttr(registry, s_label_dicts)) == NULL
            || (family_of = PyObject_GetAttr(registry, s_family_of)) == NULL
            || (key = untrack_atomic(PyTuple_Pack(3, family, sample, labels))) == NULL)
        goto done;
    PyObject *found = PyDict_GetItemWithError(ids, key);
    if (found != NULL || PyErr_Occurred()) {
        out = Py_XNewRef(found);
        goto done;
    }
    if ((sid = PyLong_FromSsize_t(PyObject_Length(keys))) == NULL
            || PyDict_SetItem(ids, key, sid) < 0 || PyList_Append(keys, key) < 0
            || (label_dict = PyDict_New()) == NULL
            || PyDict_MergeFromSeq2(label_dict, labels, 1) < 0
            || PyList_Append(label_dicts, label_dict) < 0)
        goto done;
    int known = PyDict_Contains(family_of, family);
    if (known < 0)
        goto done;
    if (!known) {
        PyObject *kind = untrack_atomic(PyTuple_Pack(2, typ, help));
        int failed = kind == NULL || PyDict_SetItem(family_of, family, kind) < 0;
        Py_XDECREF(kind);
        if (failed)
            goto done;
    }
    if (histogram) {
        PyObject *histogram_ids = PyObject_GetAttr(registry, s_histogram_ids);
        PyObject *histograms = histogram_ids == NULL ? NULL
                               : PyObject_GetAttr(registry, s_histograms);
        int failed = histograms == NULL || PySet_Add(histogram_ids, sid) < 0
                     || index_histogram(histograms, not_base, family, labels, label_dict,
                                        sid, kind, parse_bucket) < 0;
        Py_XDECREF(histogram_ids);
        Py_XDECREF(histograms);
        if (failed)
            goto done;
    }
    out = Py_NewRef(sid);
done:
    Py_XDECREF(ids);
    Py_XDECREF(keys);
    Py_XDECREF(label_dicts);
    Py_XDECREF(family_of);
    Py_XDECREF(key);
    Py_XDECREF(sid);
    Py_XDECREF(label_dict);
    return out;
}

static PyMethodDef speedups_functions[] = {
    {"key_table", key_table, METH_VARARGS,
     "key_table(buffer, pos, used, payload, table) -> (ids, offsets, pos, torn): "
     "FileReader._parse for a fixed payload."},
    {"header", header, METH_O,
     "header(buffer) -> int: the int32 at the start of a mapped file (MapFault: shortened)."},
    {"values", values, METH_VARARGS,
     "values(buffer, offsets, per) -> tuple: the per doubles at each offset."},
    {"copy", copy_bytes, METH_VARARGS,
     "copy(buffer, start, stop) -> bytes: buffer[start:stop] (MapFault: shortened)."},
    {"stamped", stamped, METH_VARARGS,
     "stamped(buffer, offsets, size) -> bytes: each slot and its first double again "
     "(MapFault: shortened)."},
    {"watch", watch, METH_O,
     "watch(map) -> bool: a store past the end of the map's file, once cut short, goes to a "
     "sink instead of raising SIGBUS."},
    {"unwatch", unwatch, METH_O, "unwatch(map): before the map is closed."},
    {"sunk", sunk, METH_NOARGS,
     "sunk() -> int: stores that met a cut file and were turned into a sink."},
    {"pick", pick, METH_VARARGS,
     "pick(column, ids, start) -> (list, missing): column[i] for each i of ids[start:] "
     "and how many are None (collector.pick)."},
    {"register", register_series, METH_VARARGS,
     "register(registry, not_base, parse_bucket, family, typ, help, sample, labels) -> int: "
     "SeriesRegistry.add in C."},
    {"parse_key", parse_key, METH_O,
     "parse_key(text) -> (family, sample, labels, help) or None: a plain key's parts."},
    {"derived", derived_pairs, METH_VARARGS,
     "derived(templates, own, numbers, start) -> list: (own[t], numbers[start + i]) for "
     "each t of templates not None (collector.derived)."},
    {"key_set", key_set, METH_O,
     "key_set(ids) -> bytes: the numbers in the array('i') ids as a bitmap."},
    {NULL, NULL, 0, NULL},
};

/* -- module ------------------------------------------------------------------------------ */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_methods = speedups_functions,
    .m_name = "gunicorn_prometheus_exporter._speedups",
    .m_doc = "The request path in C (optional; speedups.py falls back to Python).",
    .m_size = -1,
};

static int
intern_all(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&s_type, "type"}, {&s_status, "status"}, {&s_body, "body"},
        {&s_more_body, "more_body"}, {&s_path, "path"}, {&s_get, "get"}, {&s_http, "http"},
        {&s_throw, "throw"}, {&s_close, "close"}, {&s_method, "method"}, {&s_headers, "headers"},
        {&s_response_start, "http.response.start"},
        {&s_response_body, "http.response.body"},
        {&s_response_pathsend, "http.response.pathsend"},
        {&s_request_method, "REQUEST_METHOD"}, {&s_path_info, "PATH_INFO"},
        {&s_content_length, "CONTENT_LENGTH"}, {&s_server_protocol, "SERVER_PROTOCOL"},
        {&s_status_code, "status_code"}, {&s_sent, "sent"}, {&s_nr, "nr"},
        {&s_max_requests, "max_requests"}, {&s_transfer_encoding, "HTTP_TRANSFER_ENCODING"},
        {&s_file_wrapper, "wsgi.file_wrapper"},
        {&s_ids, "ids"}, {&s_keys, "keys"}, {&s_label_dicts, "label_dicts"},
        {&s_family_of, "family_of"}, {&s_histogram_ids, "histogram_ids"},
        {&s_histograms, "histograms"}, {&s_buckets, "buckets"}, {&s_sum, "sum"},
        {&s_labels, "labels"}, {&s_native, "native"}, {&s_ordered, "ordered"}, {&s_le, "le"},
        {&s_inf_label, "+Inf"}, {&s_add, "add"}, {&s_bucket_label, "__native__"},
        {&s_empty, ""},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    }
    return 0;
}

static int
add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* MapFault (an OSError): a read of a mapped file cut short, the file shortened under it. */
static int
add_map_fault(PyObject *module)
{
    MapFault = PyErr_NewExceptionWithDoc(
        "gunicorn_prometheus_exporter._speedups.MapFault",
        "A mapped file was found shortened (truncated) while read: read it as torn.",
        PyExc_OSError, NULL);
    if (MapFault == NULL)
        return -1;
    Py_INCREF(MapFault);
    if (PyModule_AddObject(module, "MapFault", MapFault) < 0) {
        Py_DECREF(MapFault);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern_all() < 0)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    if (add_type(module, "RequestWriter", &RequestWriterType) < 0
            || PyType_Ready(&RequestMeterType) < 0 || PyType_Ready(&ReceivingType) < 0
            || PyType_Ready(&MeteredCallType) < 0
            || add_type(module, "MeteredApp", &MeteredAppType) < 0
            || add_type(module, "WSGIHooks", &WSGIHooksType) < 0
            || add_type(module, "MeteredWSGI", &MeteredWSGIType) < 0
            || add_type(module, "KeyTable", &KeyTableType) < 0
            || add_map_fault(module) < 0
#ifdef SOURCE_DIGEST
            || PyModule_AddStringConstant(module, "SOURCE_DIGEST", SOURCE_DIGEST) < 0
#endif
            ) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
