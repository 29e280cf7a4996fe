//! cellbox's errors as one Python exception, `CellboxError(kind, message)`;
//! `cellbox/exceptions.py` raises E2B's class for each kind instead.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;

create_exception!(
    _native,
    CellboxError,
    PyException,
    "A failure of the sandbox: args are (kind, message)."
);

/// The Python exception for `error`. Its kind is [`cellbox::Error::kind`],
/// or `no_space` for a write that found the disk full.
pub fn to_python(error: cellbox::Error) -> PyErr {
    let kind = match &error {
        cellbox::Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            "no_space"
        }
        other => other.kind(),
    };
    CellboxError::new_err((kind, error.to_string()))
}
