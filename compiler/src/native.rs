//! Export as native code: a model's prediction (and, for a recurrent token model, its
//! one-step generation program) compiled ahead of time into an object file, with the C header
//! that declares the library's entry points. The programs are the ones `nabla predict` and
//! `nabla generate` compile ([`ModelPrograms::prediction_plan`],
//! [`ModelPrograms::generation_plan`]), one prediction program per batch size asked for, so a
//! library and `nabla predict --batch` with the same sizes run the same machine code on the
//! same rows. Linking it (a shared and a static library) is the command line's business.
//!
//! Each program's buffer table is laid out here: parameters and layer state point into the
//! weights, embedded in the object as read-only data (one file to ship, mapped lazily and
//! shared between processes); everything else (temporaries, the copied inputs and recurrent
//! state) lives in the caller's scratch, so that calls share nothing they write.

use nabla_aot::format::{self, SlotKind, aligned, input, model, program, slot};
use nabla_runtime::Elem;

use crate::codegen::machine::{self, Machine};
use crate::codegen::object::{self, Entry, Library, Param, Word};
use crate::kernel::Plan;
use crate::model::{Model, Role, ValueKind};
use crate::programs::ModelPrograms;

/// What to export.
pub struct Options<'a> {
    /// The prefix of every symbol and macro (a C identifier).
    pub name: &'a str,
    /// The batch sizes prediction is compiled for, ascending.
    pub batches: &'a [usize],
    /// The model file, named in the header.
    pub source: &'a str,
    /// The vocabulary the weights were trained on, for a text model: each token's text and
    /// what goes between two.
    pub tokens: Option<(&'a [String], &'a str)>,
    /// The machine the library runs on.
    pub machine: &'a Machine,
}

/// An exported library before linking.
pub struct Native {
    /// The relocatable object.
    pub object: Vec<u8>,
    /// The C header.
    pub header: String,
    /// Bytes of weights inside.
    pub weights: usize,
    /// Whether it has a generation step.
    pub step: bool,
    /// Bytes of scratch a call needs.
    pub scratch: usize,
    /// Each input's name, values per example and classes (0: reals).
    pub inputs: Vec<(String, usize, usize)>,
    /// Floats of prediction per example.
    pub output_row: usize,
    /// The instruction-set extensions its code needs (`nabla_aot::cpu`'s names).
    pub features: Vec<&'static str>,
}

/// One input of the prediction as the header describes it.
struct Input {
    name: String,
    /// Values per example.
    row: usize,
    /// For class indices, how many classes (`usize::MAX >> 1` when no loss fixed it); 0 for
    /// reals.
    classes: usize,
    shape: String,
}

/// The class count an input of `kind` is checked against: 0 for reals.
fn classes(kind: ValueKind) -> usize {
    match kind {
        ValueKind::Real => 0,
        ValueKind::Class { classes } => classes.unwrap_or(usize::MAX >> 1),
    }
}

/// `programs`' prediction at every batch of `options` (and its generation step where it has
/// one) as an object and header; `values` gives each parameter's and layer state's values.
pub fn export(
    programs: &ModelPrograms,
    values: &dyn Fn(&str) -> Option<Vec<f32>>,
    options: &Options,
) -> Result<Native, String> {
    let mut plans = Vec::new();
    let mut at_batch = Vec::new();
    for &batch in options.batches {
        let (plan, model) = programs.prediction_plan(batch)?;
        plans.push(plan);
        at_batch.push(model);
    }
    let first = at_batch.first().ok_or("no batch size to compile for")?;
    let inputs: Vec<Input> = first
        .inputs
        .iter()
        .filter(|i| i.role == Role::Input)
        .map(|i| {
            let shape = first.graph.shape(i.node);
            Input {
                name: i.name.clone(),
                row: shape.numel().unwrap_or(0) / options.batches[0],
                classes: classes(i.kind),
                shape: shape.dims()[1..]
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect();
    let prediction = first.prediction.ok_or("the model has no prediction")?;
    let output_row = first.graph.shape(prediction.node).numel().unwrap_or(0) / options.batches[0];
    let step = programs
        .generates()
        .then(|| programs.generation_plan())
        .transpose()?;

    let mut weights = Weights::default();
    let mut words = vec![Word::Number(0); model::WORDS];
    let set = |words: &mut Vec<Word>, at: usize, n: usize| words[at] = Word::Number(n as u64);
    words[model::MAGIC] = Word::Number(format::MAGIC);
    set(&mut words, model::VERSION, format::VERSION as usize);
    words[model::WEIGHTS] = Word::Weights;
    let features = machine::features(options.machine).map_err(|e| e.0)?;
    words[model::FEATURES] = Word::Number(features);
    set(&mut words, model::INPUTS, inputs.len());
    let input_table = words.len();
    set(&mut words, model::INPUT_TABLE, input_table);
    for i in &inputs {
        let mut record = [Word::Number(0); input::WORDS];
        record[input::ROW] = Word::Number(i.row as u64);
        record[input::CLASSES] = Word::Number(i.classes as u64);
        words.extend(record);
    }
    set(&mut words, model::OUTPUT_ROW, output_row);
    set(&mut words, model::PROGRAMS, plans.len());
    let table = words.len();
    set(&mut words, model::PROGRAM_TABLE, table);
    words.resize(table + plans.len() * program::WORDS, Word::Number(0));
    let mut scratch = 0;
    for (i, (plan, model_at)) in plans.iter().zip(&at_batch).enumerate() {
        let layout = Layout {
            inputs: &inputs,
            states: &[],
            model: model_at,
        };
        let record = table + i * program::WORDS;
        let bytes = describe(&mut words, record, (i, plan), &layout, &mut weights, values)?;
        set(&mut words, record + program::BATCH, options.batches[i]);
        scratch = scratch.max(bytes);
    }
    let mut state_len = 0;
    let mut vocabulary = 0;
    if let Some((plan, carries, model_at)) = &step {
        let token = model_at
            .inputs
            .iter()
            .find(|i| i.role == Role::Input)
            .ok_or("the generation step has no token input")?;
        vocabulary = classes(token.kind);
        let token = [Input {
            name: token.name.clone(),
            row: 1,
            classes: vocabulary,
            shape: String::new(),
        }];
        let mut states = Vec::new();
        for (name, len) in carries {
            states.push((name.clone(), state_len));
            state_len += len;
        }
        let record = words.len();
        words.resize(record + program::WORDS, Word::Number(0));
        set(&mut words, model::STEP, record);
        let layout = Layout {
            inputs: &token,
            states: &states,
            model: model_at,
        };
        let bytes = describe(
            &mut words,
            record,
            (plans.len(), plan),
            &layout,
            &mut weights,
            values,
        )?;
        set(&mut words, record + program::BATCH, 1);
        scratch = scratch.max(bytes);
    }
    set(&mut words, model::STATE, state_len);
    set(&mut words, model::VOCABULARY, vocabulary);

    let mut all: Vec<&Plan> = plans.iter().collect();
    all.extend(step.as_ref().map(|(plan, _, _)| plan));
    let name = options.name;
    let mut entries = vec![
        Entry {
            suffix: "scratch_size",
            callee: "nabla_aot_scratch_size",
            params: vec![],
            returns: Param::Word,
        },
        Entry {
            suffix: "predict",
            callee: "nabla_aot_predict",
            params: vec![Param::Word; 4],
            returns: Param::Int,
        },
    ];
    if step.is_some() {
        entries.push(Entry {
            suffix: "step",
            callee: "nabla_aot_step",
            params: vec![Param::Int, Param::Word, Param::Word, Param::Word],
            returns: Param::Int,
        });
    }
    let weight_bytes = weights.bytes.len();
    let library = Library {
        name,
        programs: all,
        descriptor: words,
        weights: weights.bytes,
        entries,
        elem: Elem::F32,
        threads: programs.threads,
        machine: options.machine,
    };
    let object = object::object(&library).map_err(|e| e.to_string())?;
    let step_output = step
        .as_ref()
        .and_then(|(_, _, m)| {
            m.prediction
                .map(|p| m.graph.shape(p.node).numel().unwrap_or(0))
        })
        .unwrap_or(0);
    let features = nabla_aot::cpu::names(features);
    let header = header(
        options,
        &features,
        &inputs,
        output_row,
        step.is_some()
            .then_some((state_len, vocabulary, step_output)),
    );
    Ok(Native {
        inputs: inputs
            .iter()
            .map(|i| (i.name.clone(), i.row, i.classes))
            .collect(),
        output_row,
        object,
        header,
        weights: weight_bytes,
        step: step.is_some(),
        scratch: scratch + format::ALIGN,
        features,
    })
}

/// The weights blob: each parameter or layer state once, aligned.
#[derive(Default)]
struct Weights {
    bytes: Vec<u8>,
    placed: Vec<(String, usize)>,
}

impl Weights {
    /// The offset of `name`'s values, placing them on first use.
    fn place(
        &mut self,
        name: &str,
        len: usize,
        values: &dyn Fn(&str) -> Option<Vec<f32>>,
    ) -> Result<usize, String> {
        if let Some(&(_, at)) = self.placed.iter().find(|(n, _)| n == name) {
            return Ok(at);
        }
        let values = values(name).ok_or_else(|| format!("the weights have no `{name}`"))?;
        if values.len() != len {
            return Err(format!(
                "`{name}` has {} values in the weights but the model needs {len}",
                values.len()
            ));
        }
        let at = aligned(self.bytes.len());
        self.bytes.resize(at, 0);
        self.bytes
            .extend(values.iter().flat_map(|v| v.to_le_bytes()));
        self.placed.push((name.to_string(), at));
        Ok(at)
    }
}

/// What a program's external buffers are.
struct Layout<'a> {
    inputs: &'a [Input],
    /// Carried state: each buffer's name and first float in the caller's state.
    states: &'a [(String, usize)],
    model: &'a Model,
}

/// Writes the record at `record` of `plan` (program `index` of the library) with its kernel
/// and slot tables, placing its weights; returns the scratch bytes it needs.
fn describe(
    words: &mut Vec<Word>,
    record: usize,
    (index, plan): (usize, &Plan),
    layout: &Layout,
    weights: &mut Weights,
    values: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> Result<usize, String> {
    let number = |n: usize| Word::Number(n as u64);
    words[record + program::KERNELS] = number(plan.kernels.len());
    words[record + program::KERNEL_TABLE] = number(words.len());
    words.extend((0..plan.kernels.len()).map(|kernel| Word::Kernel {
        program: index,
        kernel,
    }));
    words[record + program::SLOTS] = number(plan.buffers.len());
    words[record + program::SLOT_TABLE] = number(words.len());
    let output = plan
        .outputs
        .iter()
        .find(|(n, _)| n == "prediction")
        .map(|&(_, slot)| slot)
        .ok_or("the program has no prediction")?;
    words[record + program::OUTPUT] = number(output);
    let mut scratch = aligned(plan.buffers.len() * 8);
    let is_weight = |name: &str| {
        let model = layout.model;
        model.params.iter().any(|p| p.name == name) || model.states.iter().any(|s| s.name == name)
    };
    for spec in &plan.buffers {
        let (kind, arg) = match &spec.external {
            None => (SlotKind::Scratch, 0),
            Some(name) if is_weight(name) => (SlotKind::Weights, 0),
            Some(name) => {
                if let Some(i) = layout.inputs.iter().position(|i| &i.name == name) {
                    (SlotKind::Input, i)
                } else if let Some((_, at)) = layout.states.iter().find(|(n, _)| n == name) {
                    (SlotKind::State, *at)
                } else {
                    return Err(format!(
                        "the program reads `{name}`, which a library cannot feed"
                    ));
                }
            }
        };
        let offset = match kind {
            SlotKind::Weights => {
                weights.place(spec.external.as_deref().unwrap_or(""), spec.len, values)?
            }
            _ => {
                let at = scratch;
                scratch = aligned(scratch + spec.len * 4);
                at
            }
        };
        let mut record = [Word::Number(0); slot::WORDS];
        record[slot::KIND] = Word::Number(kind as u64);
        record[slot::ARG] = number(arg);
        record[slot::OFFSET] = number(offset);
        record[slot::LEN] = number(spec.len);
        words.extend(record);
    }
    words[record + program::SCRATCH] = number(scratch);
    Ok(scratch)
}

/// The C header declaring the library's entry points, with sizes as macros.
fn header(
    options: &Options,
    features: &[&str],
    inputs: &[Input],
    output_row: usize,
    step: Option<(usize, usize, usize)>,
) -> String {
    let name = options.name;
    let upper = name.to_uppercase();
    let batches: Vec<String> = options.batches.iter().map(|b| b.to_string()).collect();
    let comment = [
        format!(
            "{name}.h: the C interface of lib{name}, exported by nabla {} from {}.",
            env!("CARGO_PKG_VERSION"),
            options.source
        ),
        String::new(),
        format!(
            "The model's prediction compiled ahead of time for {} (CPU: {}), weights inside.",
            options.machine.triple(),
            options.machine.cpu_name()
        ),
        format!(
            "Instruction-set extensions it needs: {} (a CPU without one gets",
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            }
        ),
        format!("{upper}_ERROR_CPU). A call with n examples runs"),
        format!(
            "programs compiled for batches of {}: full batches of the largest, then the rest",
            batches.join(", ")
        ),
        format!(
            "in the smallest batch that holds it, as `nabla predict --batch {}` does, so the",
            batches.join(",")
        ),
        "two agree bit for bit. Nothing is global: calls from several threads are safe when each"
            .into(),
        "passes its own scratch (or NULL, to have each call allocate one).".into(),
        String::new(),
        format!(
            "Link: cc main.c lib{name}.a libnabla_aot.a {}",
            system_libraries()
        ),
        format!("  or: cc main.c -L. -l{name} (and lib{name}.so where the loader finds it)."),
    ];
    let mut h = String::from("/*");
    for line in comment {
        h += &format!("{}{line}\n *", if line.is_empty() { "" } else { " " });
    }
    h += "/\n";
    h += &format!(
        "\n#ifndef {upper}_H\n#define {upper}_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
    );
    h += &format!(
        "/* Error codes. */\n\
         #define {upper}_OK {}\n\
         #define {upper}_ERROR_NULL {} /* a pointer the call needs is NULL */\n\
         #define {upper}_ERROR_MEMORY {} /* no scratch given and none could be allocated */\n\
         #define {upper}_ERROR_INPUT {} /* a class index is not a whole number below its vocabulary; nothing computed */\n\
         #define {upper}_ERROR_FORMAT {} /* objects of different nabla versions linked together */\n\
         #define {upper}_ERROR_CPU {} /* this CPU lacks an extension the code needs; nothing computed */\n\n",
        nabla_aot::entry::OK,
        nabla_aot::entry::ERROR_NULL,
        nabla_aot::entry::ERROR_MEMORY,
        nabla_aot::entry::ERROR_INPUT,
        nabla_aot::entry::ERROR_FORMAT,
        nabla_aot::entry::ERROR_CPU,
    );
    h += &format!(
        "/* The inputs, in the order `inputs` lists them, and floats per example. */\n#define {upper}_INPUTS {}\n",
        inputs.len()
    );
    for (i, input) in inputs.iter().enumerate() {
        let what = match input.classes {
            0 => "real values".to_string(),
            c if c == usize::MAX >> 1 => "class indices, as floats".to_string(),
            c => format!("class indices below {c}, as floats"),
        };
        let field = input.name.to_uppercase().replace('.', "_");
        h += &format!(
            "#define {upper}_INPUT_{field} {i} /* `{}` [n, {}]: {what} */\n#define {upper}_INPUT_{field}_SIZE {}\n",
            input.name, input.shape, input.row
        );
    }
    let sizes: Vec<String> = inputs.iter().map(|i| i.row.to_string()).collect();
    h += &format!("#define {upper}_INPUT_SIZES {{{}}}\n", sizes.join(", "));
    h += &format!(
        "/* Floats of prediction per example. */\n#define {upper}_OUTPUT_SIZE {output_row}\n\n\
         /* Bytes of scratch one call needs; any alignment. */\n\
         size_t {name}_scratch_size(void);\n\n\
         /* The prediction for n examples: inputs[i] points at n rows of input i's values,\n\
          * prediction receives n rows of {upper}_OUTPUT_SIZE floats (logits for a classifier).\n\
          * scratch: {name}_scratch_size() bytes, or NULL to allocate one for the call.\n\
          * Returns {upper}_OK or an error code. */\n\
         int32_t {name}_predict(const float *const *inputs, size_t n, float *prediction, void *scratch);\n",
    );
    if let Some((state, vocabulary, logits)) = step {
        h += &format!(
            "\n/* Generation, one token at a time: the recurrent state's floats (zeros before a\n\
              * sequence's first token), the vocabulary, and the logits each step writes. */\n\
             #define {upper}_STATE_SIZE {state}\n#define {upper}_VOCABULARY {vocabulary}\n#define {upper}_STEP_OUTPUT_SIZE {logits}\n\n\
             /* Feeds token (below {upper}_VOCABULARY), updates state in place and writes the\n\
              * next token's logits. scratch as for {name}_predict. Returns {upper}_OK or an\n\
              * error code. */\n\
             int32_t {name}_step(int32_t token, float *state, float *logits, void *scratch);\n"
        );
    }
    if let Some((tokens, separator)) = options.tokens {
        let quoted: Vec<String> = tokens.iter().map(|t| c_string(t)).collect();
        h += &format!(
            "\n/* The vocabulary the weights were trained on: token i's text (UTF-8); text is the\n * tokens joined by {upper}_TOKEN_SEPARATOR. */\n\
             #define {upper}_TOKENS {}\n#define {upper}_TOKEN_SEPARATOR {}\n\
             static const char *const {name}_tokens[{upper}_TOKENS] = {{\n    {}\n}};\n",
            tokens.len(),
            c_string(separator),
            quoted.join(",\n    ")
        );
    }
    h += &format!("\n#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {upper}_H */\n");
    h
}

/// The system libraries a program linking the static library names: those the Rust standard
/// library inside needs (`rustc --print native-static-libs`).
pub fn system_libraries() -> &'static str {
    "-lgcc_s -lutil -lrt -lpthread -lm -ldl"
}

/// `text` as a C string literal: printable ASCII as is, everything else (and `"`, `\\`, `?`)
/// as octal escapes of its UTF-8 bytes.
fn c_string(text: &str) -> String {
    let mut out = String::from("\"");
    for &b in text.as_bytes() {
        match b {
            b' '..=b'~' if !matches!(b, b'"' | b'\\' | b'?') => out.push(b as char),
            _ => out += &format!("\\{b:03o}"),
        }
    }
    out + "\""
}
