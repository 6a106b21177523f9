//! The clock egg's saturation runs read. egg times its runs with `quanta`, whose first reading
//! in a process calibrates the CPU's time-stamp counter against the OS clock by spinning until
//! the two agree to 10 ns, or for 200 ms; on a virtual machine they seldom agree sooner, so a
//! compile that took 10 ms took 210 on most runs, the spin its largest part. Saturation runs
//! instead under a `quanta` mock clock that is set to the OS's monotonic time as each
//! iteration starts (egg's hooks run then): no calibration, and the time limit still holds,
//! checked as egg checks it, after every rule applied, at most one iteration late.

use std::sync::Arc;
use std::time::{Duration, Instant};

use egg::{Analysis, Language, Rewrite, Runner};
use quanta::{Clock, Mock};

/// Runs `runner` over `rules` under a clock that follows the OS's monotonic time iteration
/// by iteration, and returns it with the wall time the run took.
pub fn run_timed<L, N>(runner: Runner<L, N>, rules: &[Rewrite<L, N>]) -> (Runner<L, N>, Duration)
where
    L: Language + 'static,
    N: Analysis<L> + 'static,
{
    let (clock, mock) = Clock::mock();
    let started = Instant::now();
    let runner = runner.with_hook(follow(mock, started));
    let runner = quanta::with_clock(&clock, || runner.run(rules));
    (runner, started.elapsed())
}

/// A hook that moves `mock` forward to the time elapsed since `started`.
fn follow<L, N>(
    mock: Arc<Mock>,
    started: Instant,
) -> impl FnMut(&mut Runner<L, N>) -> Result<(), String> + 'static
where
    L: Language,
    N: Analysis<L>,
{
    move |_| {
        let now = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        mock.increment(now.saturating_sub(mock.value()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egg::{RecExpr, StopReason, SymbolLang};

    #[test]
    fn the_time_limit_still_stops_a_run() {
        // No rules, but each iteration takes 5 ms and adds a node, so it never saturates: the
        // time limit stops it after about 10 iterations, the iteration limit (if the clock
        // stood still) after 200.
        let runner: Runner<SymbolLang, ()> = Runner::default()
            .with_expr(&"x".parse().unwrap())
            .with_iter_limit(200)
            .with_node_limit(usize::MAX)
            .with_time_limit(Duration::from_millis(50))
            .with_hook(|runner| {
                std::thread::sleep(Duration::from_millis(5));
                let fresh = format!("n{}", runner.iterations.len());
                runner
                    .egraph
                    .add_expr(&fresh.parse::<RecExpr<SymbolLang>>().unwrap());
                Ok(())
            });
        let (runner, took) = run_timed(runner, &[]);
        assert!(
            matches!(runner.stop_reason, Some(StopReason::TimeLimit(_))),
            "stopped by {:?}",
            runner.stop_reason
        );
        assert!(
            (Duration::from_millis(50)..Duration::from_millis(500)).contains(&took),
            "took {took:?}"
        );
    }
}
