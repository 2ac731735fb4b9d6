# agentcell's bash kernel: written to the stdin of `bash --noprofile --norc -i`.
# Interactive, because an interactive bash answers SIGINT by abandoning the running command line
# (a loop, a sleep) and reading the next one, with its variables intact; and with readline, which
# reads stdin a byte at a time, so that `read` below gets the bytes that follow a request line.
# Readline echoes what it reads to fd 2, so fd 2 goes to /dev/null and the real stderr is fd 3.
# Each request is
#   __ac_begin ID\n NAME=VALUE\0 … \0 CODE\0 eval "$__ac_code" </dev/null 2>&3\n __ac_end ID $?\n
# (env values and code are read as data by `read`, never parsed as script text by the runner).
# Answers are frames "\x1e<json>\n" on stdout; each execution ends with "\x1e<id>\n" on stderr.
exec 3>&2 2>/dev/null
set +o history +H +m
PS1='' PS2='' PS0='' PROMPT_COMMAND=''
__ac_count=0
__ac_begin() {
  __ac_saved=() __ac_unset=()
  local __ac_kv __ac_n
  while IFS= read -r -d '' __ac_kv && [[ -n $__ac_kv ]]; do
    __ac_n=${__ac_kv%%=*}
    if [[ -v $__ac_n ]]; then __ac_saved+=("$__ac_n=${!__ac_n}"); else __ac_unset+=("$__ac_n"); fi
    export "$__ac_kv"
  done
  IFS= read -r -d '' __ac_code
}
__ac_end() {
  local __ac_status=$2 __ac_kv
  for __ac_kv in "${__ac_saved[@]}"; do export "$__ac_kv"; done
  for __ac_kv in "${__ac_unset[@]}"; do unset "$__ac_kv"; done
  __ac_count=$((__ac_count + 1))
  if ((__ac_status != 0)); then
    printf '\x1e{"msg_type":"error","id":"%s","content":{"ename":"ExitCode","evalue":"%d","traceback":[]}}\n' "$1" "$__ac_status"
    printf '\x1e{"msg_type":"execute_reply","id":"%s","content":{"status":"error","execution_count":%d}}\n' "$1" "$__ac_count"
  else
    printf '\x1e{"msg_type":"execute_reply","id":"%s","content":{"status":"ok","execution_count":%d}}\n' "$1" "$__ac_count"
  fi
  printf '\x1e%s\n' "$1" >&3
  return "$__ac_status"
}
printf '\x1e{"msg_type":"ready","id":null,"content":{}}\n'
printf '\x1eready\n' >&3
