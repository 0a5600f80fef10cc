"""TFLite Model Metadata for MediaPipe Tasks' TextClassifier: BERT tokenizer, labels, files packed inside.

MediaPipe's TextClassifier takes a .tflite with three int32 inputs [1, L] and TFLite Model
Metadata: a BertTokenizer input process unit whose vocabulary is a file packed in the model,
the inputs named `ids`, `mask`, `segment_ids`, and a labels file on the output. It then
tokenizes strings itself, on Android, iOS, the web and Python alike.

The route: the metadata flatbuffer is built here with the schema module MediaPipe's own wheel
ships (`mediapipe.tasks.metadata.metadata_schema_py_generated`) and the `flatbuffers` package,
and the vocabulary and labels are appended as an uncompressed zip, as TFLite Support's
`MetadataPopulator` does. tflite-support 0.4.4 pins protobuf<4, which TensorFlow 2.21 cannot
share; mediapipe 1.2's own `metadata_writers` fail to import (the compiled
`mediapipe.tasks.cc.metadata.python` module is missing from the wheel). The one thing that
module computed, the minimum parser version, is fixed for the fields written here.

Nothing here uses TensorFlow (though `import mediapipe` loads it when it is installed): the
MediaPipe runtime also uses this module, to read the file's metadata and to build the token probe
that shows which ids MediaPipe's tokenizer fed the model.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile

import numpy as np

from tfkit.errors import TfkitError

FORMAT = "tflite-mediapipe"
EXTRA = 'pip install "tfkit[mediapipe]"'
SIGNATURE = "serving_default"  # gives the tensor names MediaPipe's metadata writers expect
# input name in the endpoint -> the metadata name MediaPipe's BertPreprocessorCalculator looks up
INPUTS = {"input_word_ids": "ids", "input_mask": "mask", "input_type_ids": "segment_ids"}
METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER, MODEL_IDENTIFIER = b"M001", b"TFL3"
# Schema history: input process units and BertTokenizerOptions came in 1.1.0, the VOCABULARY
# file type in 1.0.1; nothing newer is written (no file versions, tensor groups, custom metadata).
MIN_PARSER_VERSION = "1.1.0"
VOCAB_FILE, LABELS_FILE = "vocab.txt", "labels.txt"


def available() -> bool:
    """Whether MediaPipe is installed (checked without importing it: its import loads TensorFlow)."""
    return importlib.util.find_spec("mediapipe") is not None


def require() -> None:
    """Fails with the one line that says what to install."""
    if not available():
        raise TfkitError(f"format {FORMAT} needs MediaPipe, which is not installed: {EXTRA}")


def metadata_schema():
    """MediaPipe's generated module of the TFLite Model Metadata schema (imported on use)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated

    return metadata_schema_py_generated


def _tensor_name(name: str) -> str:
    return f"{SIGNATURE}_{name}:0"


def input_names(flatbuffer: bytes) -> list[str]:
    """The model's input tensor names, in subgraph order."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(flatbuffer, 0).Subgraphs(0)
    return [graph.Tensors(graph.Inputs(i)).Name().decode() for i in range(graph.InputsLength())]


def tokenizer_problem(lowercase: bool, truncation: str) -> str | None:
    """Why MediaPipe's BertTokenizer would feed this model other ids than its training did (None: it would not)."""
    if not lowercase:
        return "MediaPipe's BertTokenizer always lower-cases, and this model was trained cased: it would see other tokens than in training"
    if truncation != "head":
        return (f"MediaPipe's BertTokenizer keeps only the start of a long text, and this model was trained on {truncation} "
                "truncation (train with --truncation head for MediaPipe)")
    return None


def model_metadata(flatbuffer: bytes, labels: list[str], lowercase: bool, description: str, truncation: str = "head") -> bytes:
    """The TFLITE_METADATA buffer: BERT tokenizer (vocab file) on the inputs, labels file on the output.

    Input tensor metadata must follow the subgraph's input order; MediaPipe finds each input by
    its metadata name. The schema has no casing option: MediaPipe lower-cases ASCII letters
    before WordPiece, always, so only an uncased model (tf-text's `lower_case_nfd_strip_accents`)
    can be given to it.
    """
    problem = tokenizer_problem(lowercase, truncation)
    if problem:
        raise TfkitError(problem)
    md = metadata_schema()
    by_tensor = {_tensor_name(k): v for k, v in INPUTS.items()}
    names = input_names(flatbuffer)
    if sorted(names) != sorted(by_tensor):
        raise TfkitError(f"the model's inputs are {names}, MediaPipe's BERT preprocessor needs {sorted(by_tensor)}")

    def tensor(name: str, description: str, files=None, stats=None):
        t = md.TensorMetadataT()
        t.name, t.description, t.associatedFiles, t.stats = name, description, files, stats
        t.content = md.ContentT()
        t.content.contentPropertiesType = md.ContentProperties.FeatureProperties
        t.content.contentProperties = md.FeaturePropertiesT()
        return t

    def file(name: str, description: str, kind: int):
        f = md.AssociatedFileT()
        f.name, f.description, f.type = name, description, kind
        return f

    descriptions = {"ids": "Token ids of the input text, [CLS] first, [SEP] last, 0-padded.",
                    "mask": "1 for real tokens, 0 for padding.", "segment_ids": "0 (a single text)."}
    inputs = [tensor(by_tensor[n], descriptions[by_tensor[n]]) for n in names]
    tokenizer = md.ProcessUnitT()
    tokenizer.optionsType = md.ProcessUnitOptions.BertTokenizerOptions
    tokenizer.options = md.BertTokenizerOptionsT()
    tokenizer.options.vocabFile = [file(VOCAB_FILE, "WordPiece vocabulary, one token a line, id = line number.",
                                        md.AssociatedFileType.VOCABULARY)]
    stats = md.StatsT()
    stats.max, stats.min = [1.0], [0.0]
    labels_file = file(LABELS_FILE, f"The {len(labels)} class names, one a line, in output order.",
                       md.AssociatedFileType.TENSOR_AXIS_LABELS)
    output = tensor("probability", "Softmax probability of each class.", [labels_file], stats)

    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata, graph.outputTensorMetadata, graph.inputProcessUnits = inputs, [output], [tokenizer]
    model = md.ModelMetadataT()
    model.name, model.description, model.subgraphMetadata = "TextClassifier", description, [graph]
    model.minParserVersion = MIN_PARSER_VERSION
    return _pack(model, METADATA_IDENTIFIER)


def associated_files(vocab: list[str], labels: list[str]) -> dict[str, bytes]:
    """The files model_metadata names, as MediaPipe reads them (one entry a line)."""
    return {VOCAB_FILE: ("\n".join(vocab) + "\n").encode("utf-8"), LABELS_FILE: ("\n".join(labels) + "\n").encode("utf-8")}


def pack_files(flatbuffer: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `files` appended as an uncompressed zip, where MediaPipe looks for associated files.

    The flatbuffer itself is unchanged, so any TFLite interpreter still loads the file.
    """
    out = io.BytesIO()
    out.write(flatbuffer)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def read_files(data: bytes) -> dict[str, bytes]:
    """The associated files packed in a .tflite (empty if none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def read_metadata(data: bytes):
    """The file's TFLITE_METADATA as the schema's object API (`ModelMetadataT`); TfkitError if absent."""
    from ai_edge_litert import schema_py_generated as schema

    md = metadata_schema()
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == METADATA_NAME:
            buffer = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            return md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(buffer, 0))
    raise TfkitError(f"the file has no {METADATA_NAME} (TFLite Model Metadata); export it with `tfkit export --formats {FORMAT}`")


def token_probe(data: bytes) -> bytes:
    """A model with the file's own inputs, tokenizer metadata and packed vocabulary that outputs what it is fed.

    Its output [1, L] is `(ids + mask) * mask` as float: id + 1 at each real token, 0 at padding.
    Run by MediaPipe's TextClassifier, each category's score is then the token id at position
    `index`, plus one: the ids MediaPipe's own tokenizer produced, read without reimplementing it.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    source = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    inputs = [source.Tensors(source.Inputs(i)) for i in range(source.InputsLength())]
    by_name = {INPUTS[t.Name().decode()[len(SIGNATURE) + 1 : -2]]: i for i, t in enumerate(inputs)}
    shape = inputs[0].ShapeAsNumpy().astype(np.int32)

    graph = schema.SubGraphT()
    graph.tensors = []
    for name, dtype in [(t.Name(), schema.TensorType.INT32) for t in inputs] + [
            (b"sum", schema.TensorType.INT32), (b"fed", schema.TensorType.INT32), (b"probe", schema.TensorType.FLOAT32)]:
        t = schema.TensorT()
        t.name, t.type, t.shape, t.buffer = name, dtype, shape.copy(), 0
        graph.tensors.append(t)
    ids, mask = by_name["ids"], by_name["mask"]
    graph.inputs, graph.outputs = np.arange(len(inputs), dtype=np.int32), np.array([len(inputs) + 2], np.int32)
    codes, graph.operators = [], []
    for code, args, result in ((schema.BuiltinOperator.ADD, [ids, mask], len(inputs)),
                               (schema.BuiltinOperator.MUL, [len(inputs), mask], len(inputs) + 1),
                               (schema.BuiltinOperator.CAST, [len(inputs) + 1], len(inputs) + 2)):
        op_code = schema.OperatorCodeT()
        op_code.builtinCode, op_code.deprecatedBuiltinCode, op_code.version = code, code, 1
        codes.append(op_code)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = len(codes) - 1, np.array(args, np.int32), np.array([result], np.int32)
        graph.operators.append(op)

    metadata = read_metadata(data)  # the same tokenizer and vocabulary; no labels: the probe has L outputs
    metadata.subgraphMetadata[0].outputTensorMetadata[0].associatedFiles = None
    metadata.subgraphMetadata[0].outputTensorMetadata[0].stats = None
    model = schema.ModelT()
    model.version, model.description, model.operatorCodes, model.subgraphs = 3, b"tfkit token probe", codes, [graph]
    model.buffers = [schema.BufferT(), schema.BufferT()]
    model.buffers[1].data = np.frombuffer(_pack(metadata, METADATA_IDENTIFIER), np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), 1
    model.metadata = [entry]
    files = {k: v for k, v in read_files(data).items() if k != LABELS_FILE}
    return pack_files(bytes(flatbuffer_utils.convert_object_to_bytearray(model)), files)


def _pack(table, identifier: bytes) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(table.Pack(builder), identifier)
    return bytes(builder.Output())
