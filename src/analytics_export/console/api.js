// The REST API client: every call sends the signed-in key as a Bearer header, never in a URL.

const KEY = "analytics-export.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  signIn(key) { sessionStorage.setItem(KEY, key); },
  signOut() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** JSON from `path`; throws ApiError with the API's `detail` message on any non-2xx answer. */
export async function api(path, { method = "GET", body, key = session.key } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "the server cannot be reached; check your connection and try again");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => null);
  if (res.ok) return data;
  const detail = typeof data?.detail === "string" ? data.detail : `${res.status} ${res.statusText}`;
  if (res.status === 401 && session.key) window.dispatchEvent(new CustomEvent("unauthorized", { detail }));
  throw new ApiError(res.status, detail);
}

/** `path?k=v&...`, repeating keys whose value is an array and skipping empty values. */
export function query(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const item of [v].flat()) if (item !== undefined && item !== null && item !== "") q.append(k, item);
  }
  return q.size ? `${path}?${q}` : path;
}
