/*
 * cellbox-python: CPython 3.11 for WASI as a "reactor" module the host drives
 * cell by cell.
 *
 * Exports
 *   cellbox_init()            initialise the interpreter and import the driver
 *                             (the Wizer pre-initialisation entry point)
 *   cellbox_alloc(len) -> ptr buffer the host fills with a request
 *   cellbox_exec(ptr, len) -> execution count (or -1): run one request
 *                             (JSON {"code": ..., "env": {...}}); takes
 *                             ownership of the buffer
 * Imports
 *   cellbox.emit(kind, ptr, len)  one event to the host (see _cellbox_driver.py)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define STDLIB_DIR L"/usr/local/lib/python3.11"

__attribute__((import_module("cellbox"), import_name("emit"))) extern void
host_emit(int32_t kind, const char *ptr, size_t len);

static PyObject *run_cell;

static PyObject *cellbox_emit(PyObject *self, PyObject *args) {
    (void)self;
    int kind;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*", &kind, &data)) {
        return NULL;
    }
    host_emit(kind, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

static PyMethodDef cellbox_methods[] = {
    {"emit", cellbox_emit, METH_VARARGS, "emit(kind, payload: bytes): send one event to the host"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cellbox_module = {
    PyModuleDef_HEAD_INIT, "_cellbox", "Host interface of cellbox", -1, cellbox_methods,
};

static PyObject *init_cellbox_module(void) { return PyModule_Create(&cellbox_module); }

static void fail(const char *what) {
    if (PyErr_Occurred()) {
        PyErr_Print();
    }
    static const char prefix[] = "cellbox-python: initialisation failed: ";
    host_emit(2, prefix, sizeof prefix - 1);
    host_emit(2, what, strlen(what));
    __builtin_trap();
}

__attribute__((export_name("cellbox_init"))) void cellbox_init(void) {
    if (run_cell != NULL) {
        return;
    }
    if (PyImport_AppendInittab("_cellbox", init_cellbox_module) < 0) {
        fail("registering _cellbox");
    }
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.install_signal_handlers = 0;
    /* Fixed so that a pre-initialised snapshot behaves the same in every session. */
    config.use_hash_seed = 1;
    config.hash_seed = 0;
    config.module_search_paths_set = 1;
    PyStatus status = PyWideStringList_Append(&config.module_search_paths, STDLIB_DIR);
    if (!PyStatus_Exception(status)) {
        status = PyConfig_SetString(&config, &config.home, L"/usr/local");
    }
    if (!PyStatus_Exception(status)) {
        status = Py_InitializeFromConfig(&config);
    }
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        fail(status.err_msg ? status.err_msg : "Py_InitializeFromConfig");
    }
    PyObject *driver = PyImport_ImportModule("_cellbox_driver");
    if (driver == NULL) {
        fail("importing _cellbox_driver");
    }
    run_cell = PyObject_GetAttrString(driver, "run_cell");
    Py_DECREF(driver);
    if (run_cell == NULL) {
        fail("_cellbox_driver.run_cell");
    }
}

__attribute__((export_name("cellbox_alloc"))) char *cellbox_alloc(size_t len) {
    return malloc(len ? len : 1);
}

__attribute__((export_name("cellbox_exec"))) int32_t cellbox_exec(char *ptr, size_t len) {
    if (run_cell == NULL) {
        free(ptr);
        return -1;
    }
    PyObject *request = PyUnicode_DecodeUTF8(ptr, (Py_ssize_t)len, "replace");
    free(ptr);
    if (request == NULL) {
        PyErr_Print();
        return -1;
    }
    PyObject *count = PyObject_CallOneArg(run_cell, request);
    Py_DECREF(request);
    if (count == NULL) {
        PyErr_Print();
        return -1;
    }
    long n = PyLong_AsLong(count);
    Py_DECREF(count);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Print();
        return -1;
    }
    return (int32_t)n;
}

/* The WASI build has no shared libraries; CPython's loader still links these. */
void *dlopen(const char *file, int mode) {
    (void)file;
    (void)mode;
    return NULL;
}
char *dlerror(void) { return "dynamic loading is not supported in cellbox-python"; }
void *dlsym(void *handle, const char *symbol) {
    (void)handle;
    (void)symbol;
    return NULL;
}
