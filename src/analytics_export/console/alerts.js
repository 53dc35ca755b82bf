// Alerts: the project's incidents (open or resolved, with each channel's delivery) and its channels.

import { api } from "./api.js";
import { alertBox, announce, badge, fmtDate, h, poll, table } from "./ui.js";

const TITLES = {
  export_failed: "Export failed for good", schedule_paused: "Schedule auto-paused",
  schedule_missed: "Schedule missed its window", stream_failing: "Stream failing",
  retention_failed: "Retention run failed verification",
};

export function alertsPage(main) {
  const alert = alertBox();
  const incidents = h("tbody");
  const channels = h("tbody");
  main.append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Alerts")),
    alert,
    table("Alerts", ["Alert", "Object", "Status", "Opened", "Deliveries"], incidents),
    h("h2", {}, "Channels"),
    h("p", { class: "muted small" }, "Create channels with POST /api/alert-channels or ",
      h("code", {}, "analytics-export alerts channels create"), "."),
    table("Channels", ["Name", "Type", "Told of", "Actions"], channels));

  const remove = async (channel, button) => {
    if (!confirm(`Delete the channel ${channel.name}? Alerts not yet sent to it are skipped.`)) return;
    button.disabled = true;
    try {
      await api(`/api/alert-channels/${channel.id}`, { method: "DELETE" });
      announce(`Channel ${channel.name} deleted`);
      await load();
    } catch (err) {
      alert.show(err.message);
      button.disabled = false;
    }
  };
  const load = async () => {
    try {
      const [history, list] = await Promise.all([api("/api/alerts?limit=100"), api("/api/alert-channels?limit=100")]);
      incidents.replaceChildren(...history.items.map(incidentRow));
      if (!history.items.length) incidents.append(h("tr", {}, h("td", { colspan: "5" }, "No alerts yet.")));
      channels.replaceChildren(...list.items.map((c) => channelRow(c, remove)));
      if (!list.items.length) channels.append(h("tr", {}, h("td", { colspan: "4" }, "No channels yet.")));
    } catch (err) {
      alert.show(err.message);
    }
    return 5000;
  };
  const poller = poll(load);
  return () => poller.stop();
}

function incidentRow(incident) {
  const attempts = incident.attempts ? ` after ${incident.attempts} attempt(s)` : "";
  return h("tr", {},
    h("td", { "data-label": "Alert" }, TITLES[incident.kind] ?? incident.kind, attempts,
      incident.error ? h("div", { class: "muted small error-text" }, incident.error) : null),
    h("td", { "data-label": "Object" }, `${incident.object_type} `, h("code", {}, incident.object_id)),
    h("td", { "data-label": "Status" }, badge(incident.status),
      incident.resolution ? h("div", { class: "muted small" }, incident.resolution) : null),
    h("td", { "data-label": "Opened" }, fmtDate(incident.opened_at),
      incident.resolved_at ? h("div", { class: "muted small" }, `resolved ${fmtDate(incident.resolved_at)}`) : null),
    h("td", { "data-label": "Deliveries" }, h("ul", { class: "plain" }, incident.deliveries.map((d) =>
      h("li", { class: "delivery" }, `${d.channel ?? "(deleted channel)"} · ${d.event}: `, badge(d.status),
        d.attempts > 1 ? ` ${d.attempts} attempts` : "",
        d.last_error ? h("div", { class: "muted small" }, d.last_error) : null)))));
}

function channelRow(channel, remove) {
  const where = channel.type === "email" ? channel.to.join(", ") : channel.url;
  return h("tr", {},
    h("td", { "data-label": "Name" }, channel.name,
      channel.enabled ? null : h("span", { class: "muted" }, " (disabled)")),
    h("td", { "data-label": "Type" }, channel.type, h("div", { class: "muted small" }, where)),
    h("td", { "data-label": "Told of" }, channel.kinds.map((k) => TITLES[k] ?? k).join(", ")),
    h("td", { "data-label": "Actions" }, h("button", { type: "button", class: "secondary",
      "aria-label": `Delete ${channel.name}`, onclick: (e) => remove(channel, e.target) }, "Delete")));
}
