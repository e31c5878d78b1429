//! The one error type of the kernel layer. The binding layer maps each variant to a Python
//! exception in one place (`src/py/mod.rs`).

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum QfastError {
    /// A bad argument value or shape (-> `ValueError`).
    InvalidArgument(String),
    /// A wrong element type (-> `TypeError`).
    InvalidDtype(String),
    /// NaN or ±Inf in the input, at this logical position (-> `ValueError`).
    NonFinite { index: Vec<usize>, value: f32 },
    /// A value range too wide for float32 arithmetic (-> `ValueError`).
    Overflow(String),
    /// A buffer could not be allocated (-> `MemoryError`).
    OutOfMemory(String),
    /// `QFAST_ISA` asks for a path this CPU or build cannot run.
    UnsupportedIsa {
        requested: String,
        available: Vec<&'static str>,
    },
}

pub type Result<T> = std::result::Result<T, QfastError>;

/// A NumPy-style index: `()`, `(3,)`, `(1, 2)`.
pub fn format_index(index: &[usize]) -> String {
    let parts: Vec<String> = index.iter().map(|i| i.to_string()).collect();
    match parts.len() {
        1 => format!("({},)", parts[0]),
        _ => format!("({})", parts.join(", ")),
    }
}

impl fmt::Display for QfastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QfastError::InvalidArgument(msg)
            | QfastError::InvalidDtype(msg)
            | QfastError::Overflow(msg)
            | QfastError::OutOfMemory(msg) => f.write_str(msg),
            QfastError::NonFinite { index, value } => {
                let idx = format_index(index);
                write!(
                    f,
                    "input contains {value} at index {idx}; quantization needs finite values \
                     (replace or mask them first, e.g. np.nan_to_num)"
                )
            }
            QfastError::UnsupportedIsa {
                requested,
                available,
            } => write!(
                f,
                "QFAST_ISA={requested:?} cannot run on this CPU/build; paths available here: {}",
                available.join(", ")
            ),
        }
    }
}

impl std::error::Error for QfastError {}
