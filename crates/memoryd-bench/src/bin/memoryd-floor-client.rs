//! The floor of a whole client process: connect to memoryd's socket, say
//! hello, read the answer. The least any client of the socket must do, in
//! a binary with nothing else in it, linked as memoryctl is
//! (scripts/build.sh), so that the bench's "/ floor" ratio is memoryctl's
//! own work. Exits 0 only on a hello answered with a result: a failed run
//! must never count as a timing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let Some(socket) = std::env::args_os().nth(1) else {
        eprintln!("usage: memoryd-floor-client SOCKET");
        return ExitCode::from(2);
    };
    let answered = || -> std::io::Result<bool> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session.hello\",\"params\":{\"protocol\":1,\"client\":\"floor\"}}\n",
        )?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.contains("\"result\""))
    };
    match answered() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("memoryd-floor-client: {e}");
            ExitCode::FAILURE
        }
    }
}
