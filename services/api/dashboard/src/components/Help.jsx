// A "?" that explains a setting in plain words, on hover and on keyboard focus.
let counter = 0;

export function Help({ text, label = "What is this?" }) {
  const id = `help-${++counter}`;
  return (
    <span class="help">
      <button type="button" class="help-button" aria-label={label} aria-describedby={id}>
        ?
      </button>
      <span role="tooltip" id={id} class="help-tip">
        {text}
      </span>
    </span>
  );
}

// A control's label with its "?" beside it (outside the <label>, so the control's name stays the label alone).
export function HelpLabel({ htmlFor, text, help, helpLabel = `What is ${text.toLowerCase()}?` }) {
  return (
    <div class="label-row">
      <label for={htmlFor}>{text}</label>
      <Help text={help} label={helpLabel} />
    </div>
  );
}
