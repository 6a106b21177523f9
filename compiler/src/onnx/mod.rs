//! Export to ONNX: a model's evaluation graph, from its inputs to its prediction, as an ONNX
//! model (opset 17) that any ONNX runtime loads. Every primitive becomes the standard operator
//! that computes it (`MatMul`, `Conv`, `MaxPool`, `Gather`, `Where`, the elementwise
//! functions), so the file means what nabla computes, op for op; attention, which nabla fuses
//! into one op, is written as the products, mask and softmax it stands for. Parameters and
//! layer state are initializers; the batch stays symbolic (`B`), its size read at run time
//! from the input that carries it wherever a shape needs it.
//!
//! What has no ONNX counterpart here (a gradient op, windows of images as rows) is an error
//! naming the op and the binding it belongs to.

mod composite;
pub mod proto;

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;

use crate::ir::{BinaryOp, Dim, Graph, NodeId, Op, ReduceOp, Shape, UnaryOp};
use crate::model::{Model, Role, ValueKind};
use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto, attribute_type, data_type,
    dimension,
};

/// The operator set the nodes are written in, and the file format version that goes with it.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An op with no ONNX counterpart, with the built-in it is part of and the nearest name (a
    /// binding) to locate it.
    #[error("{what} cannot be exported to ONNX{}", context(builtin, near))]
    Unsupported {
        /// What it is: an op (`` `windows` op ``) or a phrase.
        what: String,
        /// The built-in it is part of.
        builtin: Option<String>,
        /// The nearest binding or parameter.
        near: Option<String>,
    },
    /// The model has no prediction to export.
    #[error("the model has no prediction to export (its loss names none)")]
    NoPrediction,
    /// A parameter or layer state the graph reads has no value.
    #[error("no value for `{0}` in the weights")]
    Missing(String),
}

/// ` (it is part of `avg_pool2d` in `p`)`, or what of it is known.
fn context(builtin: &Option<String>, near: &Option<String>) -> String {
    match (builtin, near) {
        (Some(b), Some(n)) => format!(" (it is part of `{b}` in `{n}`)"),
        (Some(b), None) => format!(" (it is part of `{b}`)"),
        (None, Some(n)) => format!(" (in `{n}`)"),
        (None, None) => String::new(),
    }
}

/// What an export wrote.
pub struct Exported {
    /// The encoded model.
    pub bytes: Vec<u8>,
    /// ONNX nodes.
    pub nodes: usize,
    /// Initializers (parameters, layer state and constants).
    pub initializers: usize,
    /// The graph's inputs, with their shapes as ONNX reads them.
    pub inputs: Vec<(String, Vec<String>)>,
    /// The output's name and shape.
    pub output: (String, Vec<String>),
}

/// The ONNX model computing `model`'s prediction (an evaluation-mode model: dropout off, batch
/// normalisation's running statistics), reading every parameter and layer state from
/// `values`. The output is named after the prediction's binding.
pub fn export(
    model: &Model,
    values: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> Result<Exported, ExportError> {
    let prediction = model.prediction.ok_or(ExportError::NoPrediction)?;
    let graph = &model.graph;
    let nodes = graph.ancestors(&[prediction.node]);
    let mut w = Writer {
        graph,
        nodes: Vec::new(),
        initializers: Vec::new(),
        names: HashMap::new(),
        shapes: HashMap::new(),
        symbols: HashMap::new(),
        fresh: 0,
    };
    let mut inputs = Vec::new();
    // First the inputs, so that every symbolic size can be read off one of them.
    for spec in &model.inputs {
        if spec.role != Role::Input || !nodes.contains(&spec.node) {
            continue;
        }
        let shape = graph.shape(spec.node).clone();
        // Indices are int64 for the caller, cast to floats inside.
        let indices = matches!(spec.kind, ValueKind::Class { .. });
        let elem = if indices {
            data_type::INT64
        } else {
            data_type::FLOAT
        };
        inputs.push((spec.name.clone(), shape.clone(), elem));
        w.symbols_of(&spec.name, &shape);
        let value = if indices {
            w.op(
                "Cast",
                &[&spec.name],
                vec![int("to", data_type::FLOAT.into())],
            )
        } else {
            spec.name.clone()
        };
        w.names.insert(spec.node, value);
    }
    for &id in &nodes {
        if w.names.contains_key(&id) {
            continue;
        }
        let value = w.node(id, values)?;
        w.names.insert(id, value);
    }
    let output_name = model
        .bindings
        .iter()
        .find(|b| b.node == prediction.node)
        .map_or("prediction".to_string(), |b| b.name.clone());
    let last = w.names[&prediction.node].clone();
    w.nodes.push(NodeProto {
        input: vec![last],
        output: vec![output_name.clone()],
        name: output_name.clone(),
        op_type: "Identity".into(),
        ..NodeProto::default()
    });
    let output_shape = graph.shape(prediction.node).clone();
    let output = value_info(&output_name, &output_shape, data_type::FLOAT);
    let exported_inputs: Vec<(String, Vec<String>)> = inputs
        .iter()
        .map(|(name, shape, _)| (name.clone(), dims_text(shape)))
        .collect();
    let (node_count, initializer_count) = (w.nodes.len(), w.initializers.len());
    let model_proto = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "nabla".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("The prediction of the nabla model `{}`.", model.name),
        graph: Some(GraphProto {
            node: w.nodes,
            name: model.name.clone(),
            initializer: w.initializers,
            doc_string: String::new(),
            input: inputs
                .iter()
                .map(|(name, shape, elem)| value_info(name, shape, *elem))
                .collect(),
            output: vec![output],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
    };
    Ok(Exported {
        bytes: model_proto.encode_to_vec(),
        nodes: node_count,
        initializers: initializer_count,
        inputs: exported_inputs,
        output: (output_name, dims_text(&output_shape)),
    })
}

/// A shape as text, one entry per axis (`B`, `784`).
fn dims_text(shape: &Shape) -> Vec<String> {
    shape.0.iter().map(|d| d.to_string()).collect()
}

/// The ONNX graph under construction.
struct Writer<'a> {
    graph: &'a Graph,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The ONNX value holding each graph node's value.
    names: HashMap<NodeId, String>,
    /// Shape tensors (int64) already built, by the shape's text.
    shapes: HashMap<String, String>,
    /// For each symbolic size, an int64 `[1]` value holding it.
    symbols: HashMap<Arc<str>, String>,
    fresh: usize,
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: attribute_type::INT,
        ..AttributeProto::default()
    }
}

fn ints(name: &str, values: impl IntoIterator<Item = usize>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.into_iter().map(|v| v as i64).collect(),
        r#type: attribute_type::INTS,
        ..AttributeProto::default()
    }
}

fn value_info(name: &str, shape: &Shape, elem: i32) -> ValueInfoProto {
    let dim = shape
        .0
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Known(n) => dimension::Value::DimValue(*n as i64),
                other => dimension::Value::DimParam(other.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

impl Writer<'_> {
    /// A new value name.
    fn fresh(&mut self, hint: &str) -> String {
        self.fresh += 1;
        format!("{hint}_{}", self.fresh)
    }

    /// Appends a node with one output and returns the output's name.
    fn op(&mut self, op_type: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let output = self.fresh(&op_type.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op_type.into(),
            attribute,
            doc_string: String::new(),
        });
        output
    }

    /// A constant tensor.
    fn constant(&mut self, dims: &[usize], elem: i32, raw: Vec<u8>) -> String {
        let name = self.fresh("const");
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: elem,
            name: name.clone(),
            raw_data: raw,
        });
        name
    }

    fn floats(&mut self, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(dims, data_type::FLOAT, raw)
    }

    fn int64s(&mut self, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&[values.len()], data_type::INT64, raw)
    }

    /// Records, for each symbolic size of an input's shape not yet known, where to read it.
    fn symbols_of(&mut self, input: &str, shape: &Shape) {
        for (axis, dim) in shape.0.iter().enumerate() {
            if let Dim::Sym(symbol) = dim
                && !self.symbols.contains_key(symbol)
            {
                let size = self.op(
                    "Shape",
                    &[input],
                    vec![int("start", axis as i64), int("end", axis as i64 + 1)],
                );
                self.symbols.insert(symbol.clone(), size);
            }
        }
    }

    /// An int64 `[rank]` value holding `shape`, symbolic sizes read at run time.
    fn shape_tensor(&mut self, shape: &Shape, near: NodeId) -> Result<String, ExportError> {
        let key = shape.to_string();
        if let Some(name) = self.shapes.get(&key) {
            return Ok(name.clone());
        }
        let name = if let Some(dims) = shape.concrete() {
            let values: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
            self.int64s(&values)
        } else {
            let mut parts = Vec::new();
            for dim in &shape.0 {
                parts.push(match dim {
                    Dim::Known(n) => self.int64s(&[*n as i64]),
                    Dim::Sym(s) => self.symbol(s, near)?,
                    Dim::Multiple(k, s) => {
                        let size = self.symbol(s, near)?;
                        let factor = self.int64s(&[*k as i64]);
                        self.op("Mul", &[&size, &factor], Vec::new())
                    }
                });
            }
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            self.op("Concat", &refs, vec![int("axis", 0)])
        };
        self.shapes.insert(key, name.clone());
        Ok(name)
    }

    fn symbol(&self, symbol: &Arc<str>, near: NodeId) -> Result<String, ExportError> {
        self.symbols
            .get(symbol)
            .cloned()
            .ok_or_else(|| self.unsupported(&format!("a size `{symbol}` no input carries"), near))
    }

    /// An error for `what` (an op's name in backquotes, or a phrase) at node `id`, named as the
    /// user wrote it: the built-in it is part of (`avg_pool2d`: its own, or that of a user on
    /// the way to the nearest named node) and that name (a binding).
    fn unsupported(&self, what: &str, id: NodeId) -> ExportError {
        let g = self.graph;
        let (mut near, mut builtin) = (g.get(id).label.clone(), g.get(id).builtin.clone());
        let mut frontier = vec![id];
        while near.is_none() && !frontier.is_empty() {
            let next: Vec<NodeId> = frontier.iter().flat_map(|&n| g.users(n)).collect();
            near = next.iter().find_map(|&n| g.get(n).label.clone());
            builtin = builtin.or_else(|| next.iter().find_map(|&n| g.get(n).builtin.clone()));
            frontier = next;
        }
        ExportError::Unsupported {
            what: what.to_string(),
            builtin,
            near,
        }
    }

    /// The ONNX value of graph node `id`, its operands written already.
    fn node(
        &mut self,
        id: NodeId,
        values: &dyn Fn(&str) -> Option<Vec<f32>>,
    ) -> Result<String, ExportError> {
        let g = self.graph;
        let args: Vec<String> = g
            .operands(id)
            .iter()
            .map(|o| self.names[o].clone())
            .collect();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let shape = g.shape(id).clone();
        Ok(match g.op(id) {
            Op::Input { name, .. } | Op::Param { name, .. } => {
                let data = values(name).ok_or_else(|| ExportError::Missing(name.clone()))?;
                let dims = shape
                    .concrete()
                    .ok_or_else(|| self.unsupported("a parameter of symbolic size", id))?;
                let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.initializers.push(TensorProto {
                    dims: dims.iter().map(|&d| d as i64).collect(),
                    data_type: data_type::FLOAT,
                    name: name.clone(),
                    raw_data: raw,
                });
                name.clone()
            }
            Op::Const(c) => self.floats(&[], &[c.get() as f32]),
            Op::Numel(counted) => match counted.numel() {
                Some(n) => self.floats(&[], &[n as f32]),
                None => {
                    let dims = self.shape_tensor(counted, id)?;
                    let product = self.op("ReduceProd", &[&dims], vec![int("keepdims", 0)]);
                    self.op(
                        "Cast",
                        &[&product],
                        vec![int("to", data_type::FLOAT.into())],
                    )
                }
            },
            Op::Iota { shape: s, axis } => {
                let n = s.0[*axis]
                    .known()
                    .ok_or_else(|| self.unsupported("iota along a symbolic axis", id))?;
                let counts: Vec<f32> = (0..n).map(|i| i as f32).collect();
                let mut dims = vec![1; s.rank()];
                dims[*axis] = n;
                let line = self.floats(&dims, &counts);
                let to = self.shape_tensor(s, id)?;
                self.op("Expand", &[&line, &to], Vec::new())
            }
            Op::Unary(u) => {
                let op = match u {
                    UnaryOp::Neg => "Neg",
                    UnaryOp::Recip => "Reciprocal",
                    UnaryOp::Exp => "Exp",
                    UnaryOp::Log => "Log",
                    UnaryOp::Sqrt => "Sqrt",
                    UnaryOp::Abs => "Abs",
                    UnaryOp::Sign => "Sign",
                    UnaryOp::Tanh => "Tanh",
                    UnaryOp::Sigmoid => "Sigmoid",
                    UnaryOp::Sin => "Sin",
                    UnaryOp::Cos => "Cos",
                    UnaryOp::Tan => "Tan",
                    UnaryOp::Sinh => "Sinh",
                    UnaryOp::Cosh => "Cosh",
                    UnaryOp::Atan => "Atan",
                    UnaryOp::Erf => "Erf",
                    UnaryOp::Gelu => return Ok(self.gelu(a[0])),
                    UnaryOp::GeluDerivative => {
                        return Err(self.unsupported("gelu's derivative", id));
                    }
                    UnaryOp::StopGradient => "Identity",
                };
                self.op(op, &a, Vec::new())
            }
            Op::Binary(b) => {
                let (op, compares) = match b {
                    BinaryOp::Add => ("Add", false),
                    BinaryOp::Sub => ("Sub", false),
                    BinaryOp::Mul => ("Mul", false),
                    BinaryOp::Div => ("Div", false),
                    BinaryOp::Pow => ("Pow", false),
                    BinaryOp::Max => ("Max", false),
                    BinaryOp::Min => ("Min", false),
                    BinaryOp::Lt => ("Less", true),
                    BinaryOp::Gt => ("Greater", true),
                    BinaryOp::Le => ("LessOrEqual", true),
                    BinaryOp::Eq => ("Equal", true),
                };
                let out = self.op(op, &a, Vec::new());
                if compares {
                    self.op("Cast", &[&out], vec![int("to", data_type::FLOAT.into())])
                } else {
                    out
                }
            }
            Op::Select => {
                let cond = self.op("Cast", &[a[0]], vec![int("to", data_type::BOOL.into())]);
                self.op("Where", &[&cond, a[1], a[2]], Vec::new())
            }
            Op::Reduce(kind, axes) => match kind {
                ReduceOp::Sum => {
                    let axes: Vec<i64> = axes.iter().map(|&x| x as i64).collect();
                    let axes = self.int64s(&axes);
                    self.op("ReduceSum", &[a[0], &axes], vec![int("keepdims", 1)])
                }
                ReduceOp::Max => self.op(
                    "ReduceMax",
                    &[a[0]],
                    vec![ints("axes", axes.iter().copied()), int("keepdims", 1)],
                ),
            },
            Op::Broadcast(to) => {
                let to = self.shape_tensor(to, id)?;
                self.op("Expand", &[a[0], &to], Vec::new())
            }
            Op::Reshape(to) => {
                let to = self.shape_tensor(to, id)?;
                self.op("Reshape", &[a[0], &to], Vec::new())
            }
            Op::Transpose(perm) => self.op(
                "Transpose",
                &[a[0]],
                vec![ints("perm", perm.iter().copied())],
            ),
            Op::MatMul | Op::BatchMatMul => self.op("MatMul", &a, Vec::new()),
            Op::Attention {
                causal,
                scale,
                heads,
            } => self.attention(id, &a, *causal, scale.get() as f32, *heads)?,
            Op::Conv(window) => {
                if window.fill != nabla_kernels::Fill::Zero {
                    return Err(self.unsupported("a convolution padded with other than zeros", id));
                }
                self.op("Conv", &a, window_attributes(window))
            }
            Op::Windows(window) if window.fill == nabla_kernels::Fill::Zero => {
                self.windows(id, a[0], window)?
            }
            Op::MaxPoolGather(window) if a[0] == a[1] => {
                self.op("MaxPool", &[a[0]], window_attributes(window))
            }
            Op::Slice { axis, start, len } => {
                let starts = self.int64s(&[*start as i64]);
                let ends = self.int64s(&[(start + len) as i64]);
                let axes = self.int64s(&[*axis as i64]);
                self.op("Slice", &[a[0], &starts, &ends, &axes], Vec::new())
            }
            Op::Concat { axis, .. } => self.op("Concat", &a, vec![int("axis", *axis as i64)]),
            Op::Gather => {
                let index = self.op("Cast", &[a[1]], vec![int("to", data_type::INT64.into())]);
                self.op("Gather", &[a[0], &index], vec![int("axis", 0)])
            }
            other => return Err(self.unsupported(&format!("`{}` op", other.name()), id)),
        })
    }
}

/// A window's geometry as the attributes of `Conv` and `MaxPool`.
fn window_attributes(w: &nabla_kernels::Window) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", w.kernel),
        ints("strides", w.stride),
        ints(
            "pads",
            [w.padding[0], w.padding[1], w.padding[0], w.padding[1]],
        ),
        ints("dilations", w.dilation),
    ]
}
