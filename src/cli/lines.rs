//! Reading records from standard input: one record per line, split into
//! key and value at an optional separator. Plain and transactional
//! produce share these.

use std::io::BufRead;

/// Lines handed from the stdin thread to the producer at a time.
const LINES_PER_CHUNK: usize = 1024;

/// Reads stdin on a plain thread and hands its lines (without the line
/// ending) to the async side in chunks of `LINES_PER_CHUNK`.
pub(super) fn spawn_stdin_reader() -> (
    tokio::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
    let (line_tx, line_rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(16);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
        loop {
            let mut line = Vec::new();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            chunk.push(line);
            if chunk.len() == LINES_PER_CHUNK
                && line_tx.blocking_send(std::mem::take(&mut chunk)).is_err()
            {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = line_tx.blocking_send(chunk);
        }
        Ok(())
    });
    (line_rx, reader)
}

/// Splits a line at the first `sep` into key and value; no `sep`, or no
/// separator configured, means a null key.
pub(super) fn split_line<'a>(line: &'a [u8], sep: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = sep else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::split_line;

    #[test]
    fn lines_split_at_the_first_separator_only() {
        assert_eq!(
            split_line(b"k:v:w", Some(b":")),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(split_line(b"novalue", Some(b":")), (None, &b"novalue"[..]));
        assert_eq!(
            split_line(b"a::b", Some(b"::")),
            (Some(&b"a"[..]), &b"b"[..])
        );
        assert_eq!(split_line(b"k:v", None), (None, &b"k:v"[..]));
    }
}
