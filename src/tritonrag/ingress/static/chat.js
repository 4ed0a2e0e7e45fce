/* The tritonrag chat page: vanilla JS, no dependencies.
 *
 * It talks to the ingress's OpenAI-compatible API on the same origin: GET /v1/models (the flows), GET /v1/documents
 * (the document filter) and POST /v1/chat/completions with stream: true, read with fetch + ReadableStream (SSE).
 * Everything that comes from the server (answers, titles, snippets, error messages) is put into the page as text
 * nodes (textContent); the page never assigns innerHTML.
 */
(() => {
  "use strict";

  const STORE = { key: "tritonrag.apiKey", flow: "tritonrag.flow", maxTokens: "tritonrag.maxTokens" };
  const HIDDEN_MODELS = new Set(["embedder"]);  // models that are not chat flows
  const NO_RETRIEVAL = new Set(["llm"]);          // flows that neither retrieve nor take a filter
  // a citation as the service writes it: [1] or [1, 3]
  const CITATION = /\[(\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*)\]/g;

  const $ = (id) => document.getElementById(id);
  const ui = {
    apiKey: $("api-key"), saveKey: $("save-key"), keyField: $("key-field"), keyHint: $("key-hint"),
    flow: $("flow"), flowDescription: $("flow-description"),
    docControl: $("doc-control"), docHint: $("doc-hint"), maxTokens: $("max-tokens"),
    newConversation: $("new-conversation"), kbVersion: $("kb-version"),
    messages: $("messages"), emptyState: $("empty-state"),
    composer: $("composer"), question: $("question"), send: $("send"), stop: $("stop"), status: $("status"),
  };

  const state = {
    history: [],         // the conversation sent as messages: {role, content}
    controller: null,    // the AbortController of the answer streaming now
    turns: 0,            // turn counter: element ids
    loadedKey: null,     // the key the flow and document lists were loaded with
    descriptions: {},    // flow id -> description
  };

  // ---------------------------------------------------------------- small helpers

  function storeGet(name) {
    try { return window.localStorage.getItem(name) || ""; } catch (e) { return ""; }
  }

  function storeSet(name, value) {
    try {
      if (value) window.localStorage.setItem(name, value); else window.localStorage.removeItem(name);
    } catch (e) { /* storage unavailable (private mode): the field still holds the value */ }
  }

  /** An element with a class and text content (never HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function headers(json) {
    const h = { Accept: json ? "application/json" : "text/event-stream" };
    const key = ui.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function setStatus(text) { ui.status.textContent = text || ""; }

  /** An HTTP error's message: the OpenAI error body's message, else the body's text, else the status. */
  async function errorOf(response) {
    let text = "";
    try { text = await response.text(); } catch (e) { /* no body */ }
    let message = text, code = null;
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : (body.error.message || text);
        code = body.error.code || null;
      } else if (body && body.detail) {
        message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      }
    } catch (e) { /* not JSON */ }
    const err = new Error(message || response.statusText || "request failed");
    err.status = response.status;
    err.code = code;
    return err;
  }

  async function getJSON(path) {
    let response;
    try {
      response = await fetch(path, { headers: headers(true), cache: "no-store" });
    } catch (e) {
      const err = new Error("could not reach the server (" + e.message + ")");
      err.status = 0;
      throw err;
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  // ---------------------------------------------------------------- the API key

  /** Mark the key field as needing a (valid) key; ``focus``: move the focus there (not while the user is
   * typing elsewhere). */
  function askForKey(message, focus) {
    ui.keyField.classList.add("attention");
    ui.apiKey.setAttribute("aria-invalid", "true");
    ui.keyHint.textContent = message || "Enter a valid API key.";
    ui.keyHint.classList.add("hint-error");
    if (focus) {
      ui.apiKey.focus();
      ui.apiKey.select();
    }
  }

  function keyAccepted() {
    ui.keyField.classList.remove("attention");
    ui.apiKey.removeAttribute("aria-invalid");
    ui.keyHint.classList.remove("hint-error");
    ui.keyHint.textContent = "Kept in this browser only.";
  }

  /** Store the key and reload the lists with it; ``explicit``: the user pressed Save or Enter (move the focus
   * on), rather than leaving the field. */
  function saveKey(explicit) {
    const key = ui.apiKey.value.trim();
    storeSet(STORE.key, key);
    if (key !== state.loadedKey) {
      setStatus(key ? "API key saved." : "API key removed.");
      loadLists(explicit, explicit);
    } else if (explicit) {
      ui.question.focus();
    }
  }

  // ---------------------------------------------------------------- flows and documents

  async function loadLists(focusQuestion, focusKey) {
    state.loadedKey = ui.apiKey.value.trim();
    const models = await loadModels(focusKey);
    if (models) {
      keyAccepted();
      await loadDocuments();
      if (focusQuestion) ui.question.focus();
    }
  }

  async function loadModels(focusKey) {
    try {
      const body = await getJSON("/v1/models");
      const flows = (body.data || []).filter((m) => m && m.id && !HIDDEN_MODELS.has(m.id));
      if (!flows.length) throw new Error("the server lists no chat flows");
      const wanted = ui.flow.value || storeGet(STORE.flow) || "rag";
      ui.flow.replaceChildren();
      state.descriptions = {};
      for (const m of flows) {
        const option = el("option", null, m.id);
        option.value = m.id;
        state.descriptions[m.id] = m.description || "";
        ui.flow.append(option);
      }
      ui.flow.value = flows.some((m) => m.id === wanted) ? wanted : flows[0].id;
      describeFlow();
      return flows;
    } catch (err) {
      if (err.status === 401) {
        askForKey(ui.apiKey.value.trim() ? "The server refused this key: " + err.message
          : "This server needs an API key: enter it above.", focusKey);
      } else {
        ui.flowDescription.textContent = "Could not list the flows: " + err.message;
        ui.flowDescription.classList.add("hint-error");
      }
      return null;
    }
  }

  function describeFlow() {
    ui.flowDescription.classList.remove("hint-error");
    ui.flowDescription.textContent = state.descriptions[ui.flow.value] || "";
    const control = $("doc-filter");
    if (control) control.disabled = NO_RETRIEVAL.has(ui.flow.value);
  }

  /** The document filter: a select (all documents + each one) or, when the server lists none, a text field. */
  function docControl(documents, truncated) {
    const previous = currentFilter();
    let control;
    if (documents.length) {
      control = el("select");
      const all = el("option", null, "All documents");
      all.value = "";
      control.append(all);
      for (const d of documents) {
        const source = String(d.source || "");
        if (!source) continue;
        const label = d.title && d.title !== source ? d.title + " (" + source + ")" : source;
        const option = el("option", null, label);
        option.value = source;
        if (d.chunks) option.title = d.chunks + " passages";
        control.append(option);
      }
      if (truncated) {
        const other = el("option", null, "Other document…");
        other.value = "__other__";
        control.append(other);
      }
      control.value = previous && [...control.options].some((o) => o.value === previous) ? previous : "";
      control.addEventListener("change", () => toggleOther(control.value === "__other__"));
    } else {
      control = el("input");
      control.type = "text";
      control.placeholder = "All documents";
      control.spellcheck = false;
      control.autocomplete = "off";
      control.value = previous;
    }
    control.id = "doc-filter";
    control.setAttribute("aria-describedby", "doc-hint");
    control.disabled = NO_RETRIEVAL.has(ui.flow.value);
    ui.docControl.replaceChildren(control);
  }

  function toggleOther(show) {
    let other = $("doc-filter-other");
    if (show && !other) {
      other = el("input");
      other.id = "doc-filter-other";
      other.type = "text";
      other.placeholder = "Source file name";
      other.setAttribute("aria-label", "Other document's source");
      ui.docControl.append(other);
      other.focus();
    } else if (!show && other) {
      other.remove();
    }
  }

  /** The source the answers are restricted to ("" for all documents). */
  function currentFilter() {
    const control = $("doc-filter");
    if (!control) return "";
    if (control.value === "__other__") {
      const other = $("doc-filter-other");
      return other ? other.value.trim() : "";
    }
    return control.value.trim();
  }

  async function loadDocuments() {
    ui.docHint.classList.remove("hint-error");
    try {
      const body = await getJSON("/v1/documents");
      const documents = Array.isArray(body.data) ? body.data : [];
      docControl(documents, Boolean(body.truncated));
      ui.docHint.textContent = documents.length
        ? documents.length + (body.truncated ? "+" : "") + " document" + (documents.length === 1 ? "" : "s")
        : "Or type a source file name (e.g. notes.txt) to search that document only.";
      ui.kbVersion.textContent = body.version ? "Knowledge base " + body.version : "";
    } catch (err) {
      docControl([], false);
      ui.docHint.textContent = "Could not list the documents (" + err.message + "); type a source to filter.";
      ui.docHint.classList.add("hint-error");
    }
  }

  // ---------------------------------------------------------------- the conversation

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollDown(force) {
    if (force || nearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function addUserTurn(text) {
    ui.emptyState.hidden = true;
    const turn = el("article", "turn user");
    turn.setAttribute("aria-label", "You");
    turn.append(el("div", "bubble", text));
    ui.messages.append(turn);
  }

  /** An assistant turn: header, "searched for", the answer, notices, errors, sources, footer. */
  function addAssistantTurn(flow) {
    const id = ++state.turns;
    const turn = el("article", "turn assistant");
    turn.id = "turn-" + id;
    turn.setAttribute("aria-label", "Answer");
    turn.setAttribute("aria-busy", "true");
    const head = el("div", "turn-head");
    head.append(el("span", "role", "Answer"), el("span", "badge", flow));
    const query = el("p", "query");
    query.hidden = true;
    const answer = el("div", "answer pending");
    answer.append(el("span", "typing", "Thinking…"));
    const notices = el("div", "notices");
    const sources = el("details", "sources");
    sources.open = true;
    sources.hidden = true;
    const foot = el("div", "turn-foot");
    turn.append(head, query, answer, notices, sources, foot);
    ui.messages.append(turn);
    scrollDown(true);
    return { id, turn, query, answer, notices, sources, foot, text: "", sourceCount: 0 };
  }

  /** The answer's text with each citation [n] of a listed source as a link to it. */
  function renderAnswer(view) {
    const text = view.text;
    const out = document.createDocumentFragment();
    let last = 0;
    CITATION.lastIndex = 0;
    for (let m = CITATION.exec(text); m; m = CITATION.exec(text)) {
      const numbers = m[1].split(/[,;]/).map((n) => parseInt(n, 10));
      if (!numbers.every((n) => n >= 1 && n <= view.sourceCount)) continue;  // not a listed source: plain text
      out.append(document.createTextNode(text.slice(last, m.index)));
      for (const n of numbers) out.append(citationLink(view, n));
      last = m.index + m[0].length;
    }
    out.append(document.createTextNode(text.slice(last)));
    view.answer.classList.remove("pending");
    view.answer.replaceChildren(out);
  }

  function citationLink(view, n) {
    const link = el("a", "citation", "[" + n + "]");
    link.href = "#source-" + view.id + "-" + n;
    link.dataset.n = String(n);
    link.setAttribute("aria-label", "Source " + n);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      highlightSource(view, n);
    });
    return link;
  }

  function highlightSource(view, n) {
    const target = $("source-" + view.id + "-" + n);
    if (!target) return;
    view.sources.open = true;
    for (const s of document.querySelectorAll(".source.highlight")) s.classList.remove("highlight");
    // restart the flash animation when the same source is selected again
    void target.offsetWidth;
    target.classList.add("highlight");
    target.scrollIntoView({ behavior: "smooth", block: "nearest" });
    target.focus({ preventScroll: true });
  }

  function renderSources(view, sources) {
    view.sourceCount = sources.length;
    const box = view.sources;
    box.replaceChildren();
    const summary = el("summary", null, sources.length ? "Sources (" + sources.length + ")" : "No passages found");
    box.append(summary);
    if (sources.length) {
      const list = el("ol", "source-list");
      sources.forEach((s, i) => {
        const n = i + 1;
        const item = el("li", "source");
        item.id = "source-" + view.id + "-" + n;
        item.dataset.n = String(n);
        item.tabIndex = -1;
        const head = el("div", "source-head");
        head.append(el("span", "source-n", n));
        head.append(el("span", "source-title", s.title || s.source || "Untitled"));
        if (s.section) head.append(el("span", "source-section", s.section));
        item.append(head);
        if (s.snippet) item.append(el("p", "source-snippet", s.snippet));
        const meta = [];
        if (s.source) meta.push(s.source);
        if (s.chunk_id !== undefined && s.chunk_id !== null) meta.push("passage " + s.chunk_id);
        if (typeof s.score === "number") meta.push("score " + s.score.toFixed(2));
        if (meta.length) item.append(el("p", "source-meta", meta.join(" · ")));
        list.append(item);
      });
      box.append(list);
    }
    box.hidden = false;
    if (view.text) renderAnswer(view);  // citations become links once their sources are known
  }

  function markCited(view, citations) {
    const cited = new Set((citations || []).map((c) => Number(c && c.n)));
    for (const item of view.sources.querySelectorAll(".source")) {
      const isCited = cited.has(Number(item.dataset.n));
      item.classList.toggle("cited", isCited);
      if (isCited && !item.querySelector(".cited-tag")) item.querySelector(".source-head").append(el("span", "cited-tag", "cited"));
    }
  }

  function notice(view, text, kind) {
    view.notices.append(el("p", "notice " + (kind || ""), text));
  }

  function showError(view, message) {
    const box = el("div", "error");
    box.setAttribute("role", "alert");
    box.append(el("strong", null, "Error: "), document.createTextNode(message));
    view.notices.append(box);
    if (!view.text) view.answer.hidden = true;
  }

  function describeHttpError(err) {
    const where = err.status ? "HTTP " + err.status + (err.code ? " · " + err.code : "") : "network";
    return err.message + " (" + where + ")";
  }

  // ---------------------------------------------------------------- streaming

  /** The `data:` payloads of an SSE body, as they arrive. */
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const takeEvent = (block) => {
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      return data.length ? data.join("\n") : null;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (let m = buffer.match(/\r?\n\r?\n/); m; m = buffer.match(/\r?\n\r?\n/)) {
          const block = buffer.slice(0, m.index);
          buffer = buffer.slice(m.index + m[0].length);
          const data = takeEvent(block);
          if (data !== null) yield data;
        }
      }
      buffer += decoder.decode();
      const data = buffer.trim() ? takeEvent(buffer) : null;
      if (data !== null) yield data;
    } finally {
      reader.cancel().catch(() => {});  // stop reading (after [DONE], an error or Stop)
    }
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.composer.classList.toggle("busy", busy);
  }

  async function send() {
    const question = ui.question.value.trim();
    if (!question || state.controller) return;
    const flow = ui.flow.value || "rag";
    const filter = NO_RETRIEVAL.has(flow) ? "" : currentFilter();
    const messages = [...state.history, { role: "user", content: question }];
    const body = { model: flow, messages, stream: true };
    if (filter) body.filter = { source: filter };
    const maxTokens = parseInt(ui.maxTokens.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;

    ui.question.value = "";
    autoGrow();
    addUserTurn(question);
    const view = addAssistantTurn(flow);
    view.question = question;
    if (filter) notice(view, "Searching " + filter + " only.", "muted");
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    setStatus("Answering…");
    const started = performance.now();
    let finished = false, failed = false, keyRefused = false;

    try {
      let response;
      try {
        response = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: { ...headers(false), "Content-Type": "application/json" },
          body: JSON.stringify(body),
          signal: controller.signal,
          cache: "no-store",
        });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        const err = new Error("could not reach the server (" + e.message + ")");
        err.status = 0;
        throw err;
      }
      if (!response.ok) throw await errorOf(response);
      if (ui.keyField.classList.contains("attention")) keyAccepted();
      if (!response.body) throw new Error("the browser cannot read streamed responses");
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") { finished = true; break; }
        let chunk;
        try { chunk = JSON.parse(data); } catch (e) { throw new Error("the server sent an unreadable event"); }
        if (chunk.error) {
          const err = new Error(typeof chunk.error === "string" ? chunk.error : chunk.error.message || "the answer failed");
          err.code = chunk.error.code || null;
          err.midStream = true;
          throw err;
        }
        const choice = (chunk.choices || [])[0];
        const rag = chunk.rag;
        if (rag && Array.isArray(rag.sources) && view.sources.hidden) renderSources(view, rag.sources);
        if (choice && choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
          view.text += choice.delta.content;
          renderAnswer(view);
          scrollDown(false);
        }
        if (choice && choice.finish_reason) finish(view, rag || {});
      }
      if (!finished) throw new Error("the stream ended before the answer was complete");
    } catch (err) {
      if (err.name === "AbortError") {
        notice(view, "Stopped.", "muted");
      } else {
        failed = true;
        showError(view, err.midStream ? "the answer failed: " + err.message : describeHttpError(err));
        if (err.status === 401) {
          keyRefused = true;
          askForKey("The server refused the key: " + err.message, true);
        }
      }
    } finally {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      view.turn.setAttribute("aria-busy", "false");
      view.answer.classList.remove("pending");
      if (!view.text && !failed) {
        view.answer.replaceChildren(el("span", "muted", "(no answer)"));
      }
      view.foot.textContent = seconds + " s" + (view.cached ? " · answered from the cache (" + view.cached + ")" : "");
      if (!failed && view.text) {
        state.history.push({ role: "user", content: question }, { role: "assistant", content: view.text });
      }
      state.controller = null;
      setBusy(false);
      setStatus(failed ? "The request failed." : "Answered in " + seconds + " s.");
      scrollDown(false);
      if (!keyRefused) ui.question.focus();
    }
  }

  function finish(view, rag) {
    if (Array.isArray(rag.sources) && rag.sources.length !== view.sourceCount) renderSources(view, rag.sources);
    markCited(view, rag.citations);
    const same = (a, b) => String(a).trim().toLowerCase() === String(b).trim().toLowerCase();
    if (rag.query && !same(rag.query, view.question)) {  // the standalone question (rag-chat) when it differs
      view.query.replaceChildren(el("span", "query-label", "Searched for: "), document.createTextNode(rag.query));
      view.query.hidden = false;
    }
    if (rag.cache === "exact" || rag.cache === "semantic") view.cached = rag.cache;
    if (rag.finish_reason === "length") notice(view, "The answer was cut at the token limit.", "warn");
    if (rag.finish_reason === "abstained") notice(view, "The documents do not support an answer.", "warn");
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newConversation() {
    stop();
    state.history = [];
    for (const node of [...ui.messages.children]) if (node !== ui.emptyState) node.remove();
    ui.emptyState.hidden = false;
    setStatus("New conversation.");
    ui.question.focus();
  }

  function autoGrow() {
    ui.question.style.height = "auto";
    ui.question.style.height = Math.min(ui.question.scrollHeight, 200) + "px";
  }

  // ---------------------------------------------------------------- wiring

  ui.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.question.addEventListener("input", autoGrow);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) { event.preventDefault(); stop(); }
  });
  ui.stop.addEventListener("click", () => { stop(); ui.question.focus(); });
  ui.newConversation.addEventListener("click", newConversation);
  ui.saveKey.addEventListener("click", () => saveKey(true));
  ui.apiKey.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); saveKey(true); }
  });
  ui.apiKey.addEventListener("change", () => saveKey(false));
  ui.flow.addEventListener("change", () => { storeSet(STORE.flow, ui.flow.value); describeFlow(); });
  ui.maxTokens.addEventListener("change", () => storeSet(STORE.maxTokens, ui.maxTokens.value.trim()));

  ui.apiKey.value = storeGet(STORE.key);
  ui.maxTokens.value = storeGet(STORE.maxTokens);
  ui.question.focus();
  loadLists(false, true);
})();
