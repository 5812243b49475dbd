// tagvision portal: the tag page's attribute editor (add and remove rows). Without JavaScript the page still
// works: it shows the attributes and three empty rows.
"use strict";

(function () {
  const editor = document.querySelector("[data-attribute-editor]");
  if (!editor) return;
  const rows = editor.querySelector("[data-attribute-rows]");
  const add = editor.querySelector("[data-add-attribute]");
  const renumber = () => {
    rows.querySelectorAll("[data-attribute-row]").forEach((row, i) => {
      const n = i + 1;
      row.querySelector('input[name="key"]').setAttribute("aria-label", `Attribute name ${n}`);
      row.querySelector('select[name="kind"]').setAttribute("aria-label", `Kind of attribute ${n}`);
      row.querySelector('input[name="value"]').setAttribute("aria-label", `Value of attribute ${n}`);
      row.querySelector("[data-remove-attribute]").setAttribute("aria-label", `Remove attribute ${n}`);
    });
  };
  add.hidden = false;
  add.addEventListener("click", () => {
    const template = rows.querySelector("[data-attribute-row]:last-child");
    const row = template.cloneNode(true);
    row.querySelectorAll("input").forEach((input) => { input.value = ""; });
    row.querySelector("select").value = "text";
    rows.appendChild(row);
    renumber();
    row.querySelector('input[name="key"]').focus();
  });
  rows.addEventListener("click", (event) => {
    const button = event.target.closest("[data-remove-attribute]");
    if (!button) return;
    const row = button.closest("[data-attribute-row]");
    if (rows.querySelectorAll("[data-attribute-row]").length > 1) {
      row.remove();
    } else {
      row.querySelectorAll("input").forEach((input) => { input.value = ""; });
    }
    renumber();
  });
})();
