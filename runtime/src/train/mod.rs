//! The training loop: mini-batches, shuffling, metrics, test evaluation.
//!
//! It knows nothing of models or graphs. It receives plain data (which buffers to feed, which to
//! initialise, how to read predictions) and a [`Compile`] implementation that hands it a
//! program per batch size; programs are compiled once per size and cached, so the last partial
//! batch of an epoch is trained, not dropped, at the cost of one extra compilation. Inside the
//! step loop nothing is allocated: batches are copied into buffers made once per batch size.
//!
//! One file per concern: [`contract`] (what the compiler tells the loop), [`settings`],
//! [`store`] (the buffers by name), [`programs`] (compiled once per batch size), [`metrics`],
//! [`run`] (the loop), [`step`] (one step, in one process or data-parallel), [`replay`] (the divergence guard's search for the culprit) and [`bench`].

mod bench;
mod contract;
mod metrics;
mod programs;
mod replay;
mod run;
mod settings;
mod step;
mod store;

pub use bench::{Timing, synthetic, time_steps};
pub use contract::{
    BiasCorrection, Compile, Feed, Mask, ModelInfo, ParamInfo, PredictionKind, REDUCED, SHARE,
    gradient_name, numel,
};
pub use metrics::{Report, Tally, any_f64, evaluate, predict};
pub use run::{
    Data, Divergence, Finish, Hooks, NonFinite, Position, Progress, State, TrainError, train,
};
pub use settings::{
    EarlyStopping, MAX_BATCH, MAX_EPOCHS, MAX_STEPS, Monitor, Settings, steps_per_epoch,
    total_steps,
};
pub use store::{Store, init_store, validate};

#[cfg(test)]
mod tests {
    use super::run::{epoch_order, watch};
    use super::store::fill_masks;
    use super::*;
    use crate::{Buffer, Elem};

    fn report(epoch: usize, val_loss: f64) -> Report {
        Report {
            epoch,
            step: epoch,
            loss: 0.0,
            accuracy: None,
            test_loss: None,
            test_accuracy: None,
            val_loss: Some(val_loss),
            val_accuracy: None,
            lr: 0.1,
            seconds: 0.0,
            best_epoch: None,
        }
    }

    /// A model with nothing but `masks`.
    fn bare_info(masks: Vec<Mask>) -> ModelInfo {
        ModelInfo {
            feeds: vec![],
            params: vec![],
            states: vec![],
            prediction: PredictionKind::Regression,
            bias_correction: None,
            lr_name: "lr".into(),
            min_batch: 1,
            reduced: 0,
            masks,
        }
    }

    /// The epoch at which Keras' `EarlyStopping` would stop on this sequence, and its best.
    fn stops(es: &EarlyStopping, values: &[f64]) -> Option<Finish> {
        let info = bare_info(vec![]);
        let mut state = State::default();
        values
            .iter()
            .enumerate()
            .find_map(|(i, &v)| watch(es, &report(i + 1, v), &info, &Store::default(), &mut state))
    }

    #[test]
    fn early_stopping_follows_keras() {
        let es = EarlyStopping {
            monitor: Monitor::ValLoss,
            patience: 3,
            min_delta: 0.0,
            restore_best: false,
        };
        // Best at epoch 2; epochs 3, 4, 5 do not improve: stop after epoch 5.
        assert_eq!(
            stops(&es, &[1.0, 0.9, 0.95, 0.92, 0.91, 0.5]),
            Some(Finish::EarlyStopped {
                epoch: 5,
                best_epoch: 2
            })
        );
        // An improvement resets the count.
        assert_eq!(stops(&es, &[1.0, 0.99, 0.98, 0.97, 0.96, 0.95]), None);
        // With min_delta, improvements smaller than it do not count (Keras: current + delta < best).
        let coarse = EarlyStopping {
            min_delta: 0.05,
            ..es
        };
        assert_eq!(
            stops(&coarse, &[1.0, 0.99, 0.98, 0.97, 0.5]),
            Some(Finish::EarlyStopped {
                epoch: 4,
                best_epoch: 1
            })
        );
        // Patience 0 stops at the first epoch without improvement; NaN never improves.
        let eager = EarlyStopping { patience: 0, ..es };
        assert_eq!(
            stops(&eager, &[1.0, f64::NAN]),
            Some(Finish::EarlyStopped {
                epoch: 2,
                best_epoch: 1
            })
        );
        // Accuracies are maximised.
        let acc = EarlyStopping {
            monitor: Monitor::ValAccuracy,
            ..es
        };
        assert!(acc.improves(0.9, Some(0.8)) && !acc.improves(0.8, Some(0.9)));
    }

    #[test]
    fn dropout_masks_are_inverted_and_drawn_per_layer_and_step() {
        let mask = |name: &str| Mask {
            name: name.into(),
            row_len: 100,
            p: 0.25,
        };
        let info = bare_info(vec![mask("dropout#1"), mask("dropout#2")]);
        let draw = |seed, step| {
            let mut inputs: Store = info
                .masks
                .iter()
                .map(|m| (m.name.clone(), Buffer::zeros(1000 * m.row_len, Elem::F32)))
                .collect();
            fill_masks(&info, seed, step, &mut inputs);
            (inputs["dropout#1"].to_f64(), inputs["dropout#2"].to_f64())
        };
        let (a, b) = draw(1, 7);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!(
            (zeros - 0.25).abs() < 0.01,
            "{zeros} of the elements are dropped"
        );
        let kept = (1.0f32 / 0.75) as f64;
        assert!(
            a.iter().all(|&v| v == 0.0 || v == kept),
            "kept elements are scaled by 1/(1-p)"
        );
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!(
            (mean - 1.0).abs() < 0.01,
            "the expectation is the identity: {mean}"
        );
        assert_ne!(a, b, "each layer draws its own mask");
        assert_eq!(draw(1, 7).0, a, "a function of seed, layer and step");
        assert_ne!(draw(1, 8).0, a);
        assert_ne!(draw(2, 7).0, a);
    }

    #[test]
    fn each_epoch_shuffles_independently_of_the_others() {
        let a = epoch_order(7, 3, 100);
        assert_eq!(a, epoch_order(7, 3, 100), "a function of seed and epoch");
        assert_ne!(a, epoch_order(7, 4, 100));
        assert_ne!(a, epoch_order(8, 3, 100));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "a permutation");
    }
}
