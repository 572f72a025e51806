//! The lines of long operations (update steps, verify checks), reported as
//! each finishes so a client can print them as they stream in.

use memoryd_proto::ProgressStatus;

/// Receives one line: a step or check name, its status and its detail.
pub type Sink<'a> = dyn FnMut(&str, ProgressStatus, &str) + Send + 'a;

/// Reports lines and counts the problems among them.
pub struct Tally<'a> {
    sink: &'a mut Sink<'a>,
    /// Lines reported `fail` (sub-lines excluded).
    pub problems: usize,
}

impl<'a> Tally<'a> {
    pub fn new(sink: &'a mut Sink<'a>) -> Tally<'a> {
        Tally { sink, problems: 0 }
    }

    pub fn line(&mut self, name: &str, status: ProgressStatus, detail: &str) {
        if status == ProgressStatus::Fail {
            self.problems += 1;
        }
        (self.sink)(name, status, detail);
    }

    /// A detail line under a failed step (`<personality>:<runtime>`); it
    /// does not count as a problem of its own.
    pub fn sub(&mut self, name: &str, detail: &str) {
        (self.sink)(name, ProgressStatus::Fail, detail);
    }
}
