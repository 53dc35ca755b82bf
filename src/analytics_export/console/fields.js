// What an export or schedule exports: the model, events, properties, filters, format, compression, destination.

import { api, query } from "./api.js";
import { announce, debounce, field, fmtNumber, h, newId, options } from "./ui.js";

// What each row is (docs/models.md); persons and sessions take no events, properties, filters or include.
export const MODELS = [["events", "Events"], ["persons", "Persons"], ["sessions", "Sessions"]];
const EVENT_COUNTS = [["all", "whole history"], ["range", "this window"]];
const FORMATS = [["json_lines", "JSON Lines"], ["json", "JSON"], ["csv", "CSV"], ["parquet", "Parquet"],
  ["avro", "Avro"]];
// Extra columns: [name, label].
const INCLUDE = [["uuid", "Add each event's id (uuid), to drop duplicates downstream"],
  ["inserted_at", "Add when each event was stored (inserted_at)"]];
const OPERATORS = [["eq", "equals"], ["neq", "does not equal"], ["gt", "greater than"], ["gte", "at least"],
  ["lt", "less than"], ["lte", "at most"], ["contains", "contains"], ["not_contains", "does not contain"],
  ["regex", "matches regex"], ["in", "is one of"], ["not_in", "is not one of"], ["is_set", "is set"],
  ["is_not_set", "is not set"]];
const NO_VALUE = ["is_set", "is_not_set"];
const LIST_VALUE = ["in", "not_in"];
const TEXT_VALUE = ["contains", "not_contains", "regex"];
const ORDERED = ["gt", "gte", "lt", "lte"];
const PROPERTY_NAME = /^[\p{L}\p{N}_$][\p{L}\p{N}_$.:/ -]{0,199}$/u;

const DOWNLOAD = { download: { label: "Download from this server", form: [] } };
let destinationTypes = null; // type -> its view in /api/destinations (the server's registry), asked once

function destinationsOffered() {
  destinationTypes ??= api("/api/destinations").then((data) => Object.fromEntries(data.items.map((d) => [d.type, d])));
  destinationTypes.catch(() => { destinationTypes = null; });
  return destinationTypes;
}

let formatCodecs = null; // format -> the codecs it offers, from /api/formats (the server's one table), asked once

function codecsOffered() {
  formatCodecs ??= api("/api/formats").then((data) => Object.fromEntries(data.items.map((f) => [f.format, f.codecs])));
  formatCodecs.catch(() => { formatCodecs = null; });
  return formatCodecs;
}

/** The shared fieldsets; `range()` gives the window ({start, end} ISO) the property list is read for. */
export function exportFields(range) {
  const span = () => {
    const { start, end } = range();
    return start && end && start < end ? { start, end } : {};
  };
  const model = modelPicker();
  const events = eventPicker(span, () => properties.refresh());
  const properties = propertyPicker(events, span);
  const filters = filterBuilder(properties.datalist.id);
  const format = h("select", { name: "format" }, options(FORMATS, "json_lines"));
  const compression = h("select", { name: "compression" }, options([["", "None"]], ""));
  // Only the chosen format's codecs; a loaded schedule's codec that its format no longer offers stays
  // visible as such (saving it then says why), while choosing another format drops it.
  const offerCodecs = async (wanted = compression.value, keep = false) => {
    let offered;
    try {
      offered = (await codecsOffered())[format.value] ?? [];
    } catch {
      return; // the server checks the codec on save either way
    }
    const values = [["", "None"], ...offered.map((c) => [c])];
    if (wanted && !offered.includes(wanted)) {
      if (keep) values.push([wanted, `${wanted} (not offered for ${format.value})`]);
      else wanted = "";
    }
    compression.replaceChildren(...options(values, wanted));
    compression.value = wanted;
  };
  format.addEventListener("change", () => offerCodecs());
  offerCodecs();
  const destination = destinationPicker();
  const include = INCLUDE.map(([name, label]) => [name, h("input", { type: "checkbox", value: name }), label]);
  const includeBox = h("div", { class: "checks" },
    ...include.map(([, box, label]) => h("label", { class: "check" }, box, label)));
  const ofEvents = [events.element, properties.element, filters.element, includeBox];
  const showEvents = () => ofEvents.forEach((el) => { el.hidden = !model.isEvents(); });
  model.select.addEventListener("change", showEvents);
  const element = h("div", { class: "stack" }, model.element, events.element, properties.element, filters.element,
    h("fieldset", {}, h("legend", {}, "File"), h("div", { class: "row" },
      field("Format", format),
      field("Compression", compression, "Only the codecs the format offers: text is wrapped in one stream, "
        + "Parquet and Avro compress inside the file")),
    includeBox),
    destination.element);
  return {
    element,
    model: model.select,
    refresh: properties.refresh,
    // CSV from the console is for spreadsheets: cells that would run as formulas start with '. Persons and
    // sessions send the model and its option instead of the event selections (an events body is unchanged);
    // `patch` (a schedule's edit, merged into the stored one) clears the selections a model change hides.
    body: (patch = false) => {
      const file = { format: format.value, compression: compression.value || null, destination: destination.value(),
        csv_formula_guard: format.value === "csv" };
      if (!model.isEvents()) return { ...(patch ? CLEARED : {}), ...file, ...model.body(patch) };
      return { events: events.chosen, properties: properties.selected(), filters: filters.value(), ...file,
        include: include.filter(([, box]) => box.checked).map(([name]) => name), ...model.body(patch) };
    },
    validate: () => [...(model.isEvents() ? filters.validate() : model.validate()), ...destination.validate()],
    load(spec) {
      model.set(spec);
      showEvents();
      events.set(spec.events);
      properties.set(spec.properties ?? []);
      filters.set(spec.filters);
      format.value = spec.format;
      offerCodecs(spec.compression ?? "", true);
      for (const [name, box] of include) box.checked = (spec.include ?? []).includes(name);
      destination.set(spec.destination);
      properties.refresh();
    },
  };
}

/** A small label naming a persons or sessions export or schedule; null for events. */
export function modelLabel(spec) {
  if (spec.model === "events") return null;
  return h("span", { class: "model-label", title: modelDetail(spec) }, MODELS.find(([m]) => m === spec.model)[1]);
}

/** What a persons or sessions export's rows are, with its option. */
export function modelDetail(spec) {
  return spec.model === "sessions" ? `sessions (gap ${spec.session_gap_minutes} min)`
    : `persons (event count: ${EVENT_COUNTS.find(([c]) => c === spec.person_event_count)[1]})`;
}

const CLEARED = { events: [], properties: null, filters: [], include: [] };

/** The model select with the option of the chosen model: the session gap, or what a person's event count covers. */
function modelPicker() {
  const select = h("select", { name: "model" }, options(MODELS, "events"));
  const gap = h("input", { type: "number", name: "session_gap_minutes", min: "1", max: "1440", step: "1",
    value: "30", required: true });
  const count = h("select", { name: "person_event_count" }, options(EVENT_COUNTS, "all"));
  const gapField = field("Session gap (minutes)", gap, "A user's events further apart than this are in "
    + "different sessions (1 to 1440). A window is exported once the gap has passed after it.");
  const countField = field("Event count", count, "A person's event_count over their whole history, or only "
    + "over the export's window");
  let stored = "events"; // the model of the schedule being edited
  const sync = () => {
    gapField.hidden = select.value !== "sessions";
    countField.hidden = select.value !== "persons";
  };
  select.addEventListener("change", sync);
  sync();
  return {
    select,
    element: h("fieldset", {}, h("legend", {}, "Rows"), h("div", { class: "row" },
      field("Model", select, "One row per event, per person (merged from their ids) or per session. Persons "
        + "and sessions are built from every event: no event, property or filter selection."),
      gapField, countField)),
    isEvents: () => select.value === "events",
    /** The model and its option; nothing for events, unless `patch` turns an edited schedule back to events. */
    body(patch) {
      if (select.value === "sessions") return { model: "sessions", session_gap_minutes: Number(gap.value) };
      if (select.value === "persons") return { model: "persons", person_event_count: count.value };
      return patch && stored !== "events" ? { model: "events" } : {};
    },
    validate() {
      const minutes = Number(gap.value);
      const ok = select.value !== "sessions" || (gap.value !== "" && Number.isInteger(minutes) && minutes >= 1
        && minutes <= 1440);
      return ok ? [] : [[gap, "The session gap is a whole number of minutes from 1 to 1440"]];
    },
    set(spec) {
      stored = select.value = spec.model ?? "events";
      gap.value = spec.session_gap_minutes ?? 30;
      count.value = spec.person_event_count ?? "all";
      sync();
    },
  };
}

/** An ARIA combobox adding event names as removable chips; suggestions from /api/events/names. */
function eventPicker(range, onChange) {
  const chosen = [];
  const listId = newId("event-options");
  const input = h("input", { type: "text", role: "combobox", autocomplete: "off", "aria-autocomplete": "list",
    "aria-expanded": "false", "aria-controls": listId, placeholder: "Type to search event names" });
  const list = h("ul", { id: listId, role: "listbox", class: "listbox", hidden: true, "aria-label": "Event names" });
  const chips = h("ul", { class: "chips", "aria-label": "Chosen events" });
  let items = [];
  let active = -1;

  const render = () => {
    list.replaceChildren(...items.map((item, i) => h("li", {
      id: `${listId}-${i}`, role: "option", "aria-selected": String(i === active),
      onmousedown: (e) => { e.preventDefault(); pick(item.name); },
    }, h("span", {}, item.name), h("span", { class: "muted" }, fmtNumber(item.events)))));
    list.hidden = !items.length;
    input.setAttribute("aria-expanded", String(!list.hidden));
    if (active >= 0) input.setAttribute("aria-activedescendant", `${listId}-${active}`);
    else input.removeAttribute("aria-activedescendant");
    list.children[active]?.scrollIntoView({ block: "nearest" });
  };
  const close = () => { items = []; active = -1; render(); };
  let known = null; // the range's names, asked once per range (to the minute) and filtered here as one types
  let knownFor = "";
  const names = () => {
    const r = range();
    const key = `${r.start?.slice(0, 16)} ${r.end?.slice(0, 16)}`;
    if (!known || knownFor !== key) {
      known = api(query("/api/events/names", { limit: 1000, ...r })).then((data) => data.items);
      knownFor = key;
      known.catch(() => { known = null; });
    }
    return known;
  };
  const suggest = debounce(async () => {
    const needle = input.value.trim().toLowerCase();
    try {
      items = (await names()).filter((item) => item.name.toLowerCase().includes(needle) && !chosen.includes(item.name))
        .slice(0, 20);
    } catch {
      items = [];
    }
    if (document.activeElement !== input) items = []; // answered after the user moved on
    active = -1;
    render();
  }, 150);
  const renderChips = () => chips.replaceChildren(...chosen.map((name) => h("li", {}, name,
    h("button", { type: "button", class: "chip-remove", "aria-label": `Remove ${name}`,
      onclick: () => { chosen.splice(chosen.indexOf(name), 1); renderChips(); onChange(); input.focus(); } }, "×"))));
  const pick = (name) => {
    if (!chosen.includes(name)) chosen.push(name);
    input.value = "";
    close();
    renderChips();
    onChange();
    announce(`Added event ${name}`);
  };

  input.addEventListener("input", suggest);
  input.addEventListener("blur", close);
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!items.length) return suggest();
      active = (active + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      render();
    } else if (e.key === "Enter" && (active >= 0 || input.value.trim())) {
      e.preventDefault();
      pick(active >= 0 ? items[active].name : input.value.trim());
    } else if (e.key === "Escape") {
      close();
    }
  });
  return {
    chosen,
    element: h("fieldset", {}, h("legend", {}, "Events"),
      field("Event name", input, "Arrow keys choose a suggestion, Enter adds it. None chosen: all events."),
      h("div", { class: "combo" }, list), chips),
    set(names) { chosen.splice(0, chosen.length, ...names); renderChips(); },
  };
}

/** Checkboxes of the properties seen on the chosen events in the window; none ticked means all. */
function propertyPicker(events, range) {
  const selected = new Set();
  const box = h("div", { class: "checks" });
  const datalist = h("datalist", { id: newId("property-names") });
  const note = h("p", { class: "muted" }, "Choose events and dates to list their properties.");

  const render = (names) => {
    const all = [...new Set([...names, ...selected])];
    datalist.replaceChildren(...all.map((name) => h("option", { value: name })));
    box.replaceChildren(...all.map((name) => h("label", { class: "check" },
      h("input", { type: "checkbox", value: name, checked: selected.has(name),
        onchange: (e) => (e.target.checked ? selected.add(name) : selected.delete(name)) }), name)));
  };
  const refresh = debounce(async () => {
    const { start, end } = range();
    if (!start || !end) return;
    try {
      const data = await api(query("/api/events/properties", { event: events.chosen, start, end, limit: 200 }));
      render(data.items.map((item) => item.name));
      note.textContent = data.items.length ? "None ticked: all properties are exported."
        : "No properties in this range.";
    } catch (err) {
      note.textContent = `Properties could not be listed: ${err.message}`;
    }
  }, 300);
  return {
    datalist,
    refresh,
    element: h("fieldset", {}, h("legend", {}, "Properties"), note, box, datalist),
    selected: () => (selected.size ? [...selected] : null),
    set(names) { selected.clear(); names.forEach((n) => selected.add(n)); render([]); },
  };
}

function filterBuilder(datalistId) {
  const rows = h("div", { class: "stack" });
  const filters = [];
  const add = (filter = { property: "", operator: "eq", value: null }) => {
    const row = filterRow(filter, datalistId, () => {
      filters.splice(filters.indexOf(row), 1);
      row.element.remove();
      addButton.focus();
    });
    filters.push(row);
    rows.append(row.element);
    return row;
  };
  const addButton = h("button", { type: "button", class: "secondary", onclick: () => add().focus() }, "Add filter");
  return {
    element: h("fieldset", {}, h("legend", {}, "Filters (all must match)"), rows, addButton),
    value: () => filters.map((f) => f.value()),
    validate: () => filters.flatMap((f) => f.validate()),
    set(list) { filters.splice(0).forEach((f) => f.element.remove()); list.forEach((f) => add(f)); },
  };
}

function filterRow(filter, datalistId, remove) {
  const property = h("input", { type: "text", list: datalistId, value: filter.property, autocomplete: "off" });
  const operator = h("select", {}, options(OPERATORS, filter.operator));
  const shown = Array.isArray(filter.value) ? filter.value.map(asText).join(", ") : asText(filter.value ?? "");
  const value = h("input", { type: "text", value: shown, autocomplete: "off" });
  let stored = "events"; // the model of the schedule being edited
  const sync = () => {
    value.disabled = NO_VALUE.includes(operator.value);
    value.placeholder = LIST_VALUE.includes(operator.value) ? "a, b, c" : "";
  };
  operator.addEventListener("change", sync);
  sync();
  const parsed = () => {
    const op = operator.value;
    if (NO_VALUE.includes(op)) return null;
    if (TEXT_VALUE.includes(op)) return value.value;
    if (LIST_VALUE.includes(op)) return value.value.split(",").map((v) => v.trim()).filter(Boolean).map(scalar);
    return value.value.trim() === "" ? null : scalar(value.value.trim());
  };
  return {
    focus: () => property.focus(),
    element: h("div", { class: "filter" }, field("Property", property), field("Operator", operator),
      field("Value", value, "Numbers and true/false are read as such; quote them for text"),
      h("button", { type: "button", class: "secondary", onclick: remove, "aria-label": "Remove filter" }, "Remove")),
    value: () => ({ property: property.value.trim(), operator: operator.value, value: parsed() }),
    validate() {
      const op = operator.value;
      const v = parsed();
      if (!PROPERTY_NAME.test(property.value.trim())) {
        return [[property, "A filter needs a property name: letters, digits, spaces or _ $ . : / -"]];
      }
      if (LIST_VALUE.includes(op) && !v.length) return [[value, `"${op}" needs a list of values, e.g. a, b`]];
      if (!NO_VALUE.includes(op) && (v === null || v === "")) return [[value, `"${op}" needs a value`]];
      if (ORDERED.includes(op) && typeof v === "boolean") {
        return [[value, `"${op}" compares numbers or text, not true/false`]];
      }
      return [];
    },
  };
}

/** A loaded filter value as the text `scalar` reads back to the same value: a string that would read
 * as something else (`"42"`, `"true"`, `"\"quoted\""`) is shown quoted. */
function asText(v) {
  return typeof v === "string" && scalar(v) !== v ? JSON.stringify(v) : String(v);
}

/** A number, boolean or quoted string when the text is one in JSON, else the text itself. */
function scalar(text) {
  try {
    const v = JSON.parse(text);
    if (["number", "boolean", "string"].includes(typeof v)) return v;
  } catch { /* plain text */ }
  return text;
}

/** The destination's type, its form from the registry, its connection and a Test button; `use` is "exports" (the
 * download folder first) or "streams" (the types streams take). */
export function destinationPicker(use = "exports") {
  const fallback = use === "exports" ? DOWNLOAD : {};
  const type = h("select", {}, options(Object.entries(fallback).map(([k, d]) => [k, d.label]), "download"));
  const connection = h("select", {});
  const connectionField = field("Saved connection (credentials)", connection);
  const box = h("div", { class: "row" });
  let inputs = {};
  let connections = null;
  let loaded = null; // the saved destination being edited: its settings the form has no input for are kept
  const ready = destinationsOffered().catch(() => fallback).then((all) => {
    const types = Object.fromEntries(Object.entries(all).filter(([, d]) => d[use] ?? true));
    type.replaceChildren(...options(Object.entries(types).map(([k, d]) => [k, d.label]), type.value));
    return types;
  });

  const render = async (values = {}) => {
    const spec = (await ready)[type.value] ?? DOWNLOAD.download;
    inputs = Object.fromEntries(spec.form.map(({ name, required, input }) => [name,
      h("input", { type: input, name, required, value: values[name] ?? "", autocomplete: "off",
        min: input === "number" ? "1" : null })]));
    box.replaceChildren(...spec.form.map(({ name, label, required }) =>
      field(required ? `${label} (required)` : label, inputs[name])));
    connectionField.hidden = type.value === "download";
    connections ??= api("/api/connections").catch(() => []);
    const mine = (await connections).filter((c) => c.type === type.value);
    connection.replaceChildren(...options([["", "None (server credentials)"],
      ...mine.map((c) => [c.name, `${c.name} (${c.fields.join(", ")})`])], values.connection ?? ""));
  };
  const outcome = h("div", { class: "test-result", role: "status", "aria-live": "polite" });
  const testButton = h("button", { type: "button", class: "secondary", onclick: () => test() }, "Test destination");
  // The destination as it stands, tried by the server (POST /api/destinations/test): each step, and why one failed
  const test = async () => {
    testButton.disabled = true;
    outcome.replaceChildren(h("p", { class: "muted" }, "Testing…"));
    try {
      const result = await api("/api/destinations/test", { method: "POST", body: { destination: picker.value() } });
      outcome.replaceChildren(
        h("p", { class: result.ok ? "ok" : "error" }, result.ok ? "The destination works."
          : `The destination failed at "${result.failed_step}": ${result.error}`),
        h("ol", { class: "steps", "aria-label": "Test steps" }, ...result.steps.map((step) => h("li", {
          class: step.ok ? "ok" : "error" }, `${step.ok ? "✓" : "✗"} ${step.name}`,
          step.detail ? h("span", { class: "muted" }, ` — ${step.detail}`) : ""))));
    } catch (err) {
      outcome.replaceChildren(h("p", { class: "error" }, `The test could not run: ${err.message}`));
    } finally {
      testButton.disabled = false;
    }
  };
  type.addEventListener("change", () => { outcome.replaceChildren(); render(); });
  render();
  const picker = {
    element: h("fieldset", {}, h("legend", {}, "Destination"), field("Send to", type), box, connectionField,
      h("div", { class: "row" }, testButton), outcome),
    value() {
      const shown = new Set([...Object.keys(inputs), "connection"]);
      const kept = loaded?.type === type.value
        ? Object.fromEntries(Object.entries(loaded).filter(([k]) => !shown.has(k))) : {};
      const out = { ...kept, type: type.value };
      for (const [name, input] of Object.entries(inputs)) {
        if (input.value.trim()) out[name] = input.type === "number" ? Number(input.value) : input.value.trim();
      }
      if (connection.value && type.value !== "download") out.connection = connection.value;
      return out;
    },
    validate: () => Object.values(inputs).filter((i) => i.required && !i.value.trim())
      .map((i) => [i, `${i.name} is required for this destination`]),
    set(dest) { loaded = dest; ready.then(() => { type.value = dest.type; render(dest); }); },
  };
  return picker;
}
