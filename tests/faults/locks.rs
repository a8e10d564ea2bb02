//! Mutual exclusion as the lock holders themselves believed it: a holder
//! holds from the moment its Lock answer arrived until it sent Unlock or its
//! lease lapsed from its own view (the TTL counted from the send of the last
//! KeepAlive that was answered alive), whichever came first. The server's
//! lease ends no earlier than that, so two such intervals of one lock that
//! overlap mean two holders at once.

/// Microseconds since the history began.
#[derive(Clone, Debug)]
pub struct Hold {
    pub client: usize,
    pub lock: String,
    pub acquired: u64,
    pub released: u64,
}

pub fn check(holds: &[Hold]) -> Result<(), String> {
    let mut sorted: Vec<&Hold> = holds.iter().filter(|h| h.released > h.acquired).collect();
    sorted.sort_by_key(|h| (h.lock.clone(), h.acquired));
    let mut last: Option<&Hold> = None;
    for hold in sorted {
        if let Some(before) = last.filter(|b| b.lock == hold.lock) {
            if hold.acquired < before.released {
                return Err(format!(
                    "two holders of lock {:?}: client {} from {:.3} ms to {:.3} ms, client {} from {:.3} ms",
                    hold.lock,
                    before.client,
                    before.acquired as f64 / 1000.0,
                    before.released as f64 / 1000.0,
                    hold.client,
                    hold.acquired as f64 / 1000.0
                ));
            }
            if hold.released < before.released {
                continue; // the longer hold stays the one to compare with
            }
        }
        last = Some(hold);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(client: usize, acquired: u64, released: u64) -> Hold {
        Hold { client, lock: "l".into(), acquired, released }
    }

    #[test]
    fn holders_one_after_another_pass() {
        check(&[hold(0, 0, 10), hold(1, 10, 20), hold(0, 25, 30)]).unwrap();
        // A hold whose lease had lapsed before the answer came is no hold.
        check(&[hold(0, 0, 10), hold(1, 5, 5)]).unwrap();
    }

    #[test]
    fn rejects_two_holders() {
        let e = check(&[hold(0, 0, 10), hold(1, 9, 20)]).unwrap_err();
        assert!(e.contains("two holders"), "{e}");
        // Also when a short hold sits between them.
        assert!(check(&[hold(0, 0, 100), hold(1, 10, 20), hold(2, 50, 60)]).is_err());
    }
}
