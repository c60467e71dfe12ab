#!/usr/bin/env node
// Read a DICOM Segmentation with dcmjs (the JavaScript DICOM library OHIF uses) and print, as JSON on stdout,
// what dcmjs understood of it. Used by Testing/interop/readers.py::dcmjs_read_seg.
//
// Usage: node dcmjs_read_seg.js SEG_FILE
// Exit status: 0 on success, 2 on usage error, 1 when dcmjs cannot parse the file (message on stderr).
"use strict";

const fs = require("fs");
const path = require("path");

let dcmjs;
try {
  dcmjs = require("dcmjs");
} catch (err) {
  process.stderr.write(
    `dcmjs is not installed: run "npm ci --prefix ${path.relative(process.cwd(), __dirname) || "."}" (${err.message})\n`
  );
  process.exit(3);
}

function asArray(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

function first(value) {
  const items = asArray(value);
  return items.length ? items[0] : undefined;
}

function asNumber(value) {
  const v = first(value);
  if (v === undefined || v === null || v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
}

function tagHex(value) {
  const v = first(value);
  if (typeof v === "number") return v.toString(16).toUpperCase().padStart(8, "0");
  return v ?? null;
}

function codeOf(item) {
  const code = first(item);
  if (!code) return null;
  return {
    value: code.CodeValue ?? code.LongCodeValue ?? code.URNCodeValue ?? null,
    scheme: code.CodingSchemeDesignator ?? null,
    meaning: code.CodeMeaning ?? null,
  };
}

function main() {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write("usage: node dcmjs_read_seg.js SEG_FILE\n");
    process.exit(2);
  }

  let ds;
  try {
    const buf = fs.readFileSync(file);
    const arrayBuffer = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
    const dicomDict = dcmjs.data.DicomMessage.readFile(arrayBuffer);
    ds = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.dict);
    ds._meta = dcmjs.data.DicomMetaDictionary.naturalizeDataset(dicomDict.meta);
  } catch (err) {
    const detail = process.env.DCMJS_DEBUG && err && err.stack ? err.stack : (err && err.message) || String(err);
    process.stderr.write(`dcmjs could not parse ${file}: ${detail}\n`);
    process.exit(1);
  }

  const shared = first(ds.SharedFunctionalGroupsSequence) || {};
  const perFrame = asArray(ds.PerFrameFunctionalGroupsSequence);

  const segments = asArray(ds.SegmentSequence).map((s) => ({
    number: asNumber(s.SegmentNumber),
    label: s.SegmentLabel ?? null,
    algorithm_type: s.SegmentAlgorithmType ?? null,
    algorithm_name: s.SegmentAlgorithmName ?? null,
    category: codeOf(s.SegmentedPropertyCategoryCodeSequence),
    type: codeOf(s.SegmentedPropertyTypeCodeSequence),
  }));

  const segmentFrameCounts = {};
  const frames = perFrame.map((fg, index) => {
    const segId = first(fg.SegmentIdentificationSequence) || first(shared.SegmentIdentificationSequence) || {};
    const segNumber = asNumber(segId.ReferencedSegmentNumber);
    const key = String(segNumber);
    segmentFrameCounts[key] = (segmentFrameCounts[key] || 0) + 1;

    const sources = [];
    for (const der of asArray(fg.DerivationImageSequence)) {
      for (const src of asArray(der.SourceImageSequence)) {
        sources.push({
          sop_instance_uid: src.ReferencedSOPInstanceUID ?? null,
          sop_class_uid: src.ReferencedSOPClassUID ?? null,
          frame_numbers: asArray(src.ReferencedFrameNumber).map(Number),
        });
      }
    }
    const content = first(fg.FrameContentSequence) || {};
    const position = first(fg.PlanePositionSequence);
    return {
      index: index + 1,
      segment_number: segNumber,
      dimension_index_values: asArray(content.DimensionIndexValues).map(Number),
      temporal_position_index: asNumber(content.TemporalPositionIndex),
      frame_label: content.FrameLabel ?? null,
      image_position: position ? asArray(position.ImagePositionPatient).map(Number) : null,
      sources,
    };
  });

  const dimensions = asArray(ds.DimensionIndexSequence).map((d) => ({
    index_pointer: tagHex(d.DimensionIndexPointer),
    functional_group_pointer: tagHex(d.FunctionalGroupPointer),
    description: d.DimensionDescriptionLabel ?? null,
  }));

  const pixelData = first(ds.PixelData);
  const out = {
    sop_class_uid: ds.SOPClassUID ?? null,
    sop_instance_uid: ds.SOPInstanceUID ?? null,
    transfer_syntax_uid: ds._meta.TransferSyntaxUID ?? null,
    segmentation_type: ds.SegmentationType ?? null,
    number_of_frames: asNumber(ds.NumberOfFrames),
    rows: asNumber(ds.Rows),
    columns: asNumber(ds.Columns),
    frame_of_reference_uid: ds.FrameOfReferenceUID ?? null,
    number_of_segments: segments.length,
    segments,
    per_frame_items: perFrame.length,
    segment_frame_counts: segmentFrameCounts,
    dimensions,
    referenced_series: asArray(ds.ReferencedSeriesSequence).map((s) => ({
      series_instance_uid: s.SeriesInstanceUID ?? null,
      instances: asArray(s.ReferencedInstanceSequence).map((i) => i.ReferencedSOPInstanceUID ?? null),
    })),
    pixel_data_bytes: pixelData && pixelData.byteLength !== undefined ? pixelData.byteLength : null,
    frames,
  };
  process.stdout.write(JSON.stringify(out, null, 1) + "\n");
}

main();
